"""The store's schema migrations (Alembic): every table of the store, made and upgraded in order
(``vigie.store.migrations.runner``; the revisions in ``versions/``)."""

from vigie.store.migrations.runner import FOLDER, HEAD, alembic_config, current, upgrade

__all__ = ["FOLDER", "HEAD", "alembic_config", "current", "upgrade"]
