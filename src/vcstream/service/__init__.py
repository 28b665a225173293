"""The network service: aiohttp app (REST API, signalling, static client), voice library, metrics.
It knows engines and sessions through their interfaces and GStreamer only through vcstream.media."""
