"""The store's schema migrations (Alembic): every table of the store, made and upgraded in order.

``FactStore`` upgrades its database to the latest revision (``HEAD``) when it opens it, under the
store's write lock (two processes opening a new store at once: one migrates, the other finds it
done). The revisions are in ``versions/``, one file each, frozen: a revision never reads the
models, which move on; a new revision says how to go from the previous schema to the models'.

- ``0001`` (the initial schema) makes every table of the fact store, the alerts and the service
  with their indexes and the append-only triggers. A store made before migrations (its tables
  made by ``create_all``, no ``alembic_version``) is taken as it is: the revision makes only what
  it lacks.

New revision, from the models (a development store at ``VIGIE_DATABASE_URL`` upgraded first)::

    python -m vigie.store.migrations revision -m "what changes"

>>> from sqlalchemy import create_engine
>>> with create_engine("sqlite://").begin() as connection:
...     (upgrade(connection), current(connection) == HEAD, upgrade(connection))
(True, True, False)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

__all__ = ["FOLDER", "HEAD", "alembic_config", "current", "upgrade"]

FOLDER = Path(__file__).parent  # the script location: this package


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for this folder (no ``alembic.ini``: nothing to ship)."""
    config = Config()
    config.set_main_option("script_location", str(FOLDER))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def _head() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


HEAD = _head()


def current(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> bool:
    """Upgrade the database to ``HEAD`` inside the connection's transaction (the caller's: it
    commits); whether anything was done."""
    scripts = _scripts()

    def steps(revision: Any, _context: MigrationContext) -> Any:
        return scripts._upgrade_revs(HEAD, revision)  # what ``alembic upgrade head`` runs

    context = MigrationContext.configure(connection, opts={"script": scripts, "fn": steps})
    if context.get_current_revision() == HEAD:
        return False
    with Operations.context(context):
        context.run_migrations()
    return True
