"""Alembic's environment (``env.py``) and the revisions (``versions/``); run through
``vcstream.service.db.migrate``, never with an alembic.ini."""
