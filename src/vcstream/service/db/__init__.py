"""The service's database: the models (``models``), the schema as it stood before migrations
(``baseline``), and bringing a database to the models' revision with Alembic (``migrate``). The
migration scripts ship inside this package (``migrations``), so an installed wheel can upgrade a
database without an alembic.ini."""

import logging

# Alembic logs each plugin it loads and each context it opens at INFO; ``migrate`` logs what changed,
# once. Set here, before any submodule imports alembic.
logging.getLogger("alembic").setLevel(logging.WARNING)
