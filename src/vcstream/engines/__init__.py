"""Voice conversion engines behind one interface (see ``base``); ``registry`` builds them by name."""
