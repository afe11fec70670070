"""``python -m vigie.store.migrations ARGS``: Alembic's command line on the store's migrations
(``revision -m TEXT`` autogenerates a revision from the models; ``history``; ``current``), with
the store at ``VIGIE_DATABASE_URL``."""

from __future__ import annotations

import sys

from alembic.config import CommandLine

from vigie.store.database import default_database_url
from vigie.store.migrations import alembic_config


def main(argv: list[str]) -> None:
    cli = CommandLine(prog="python -m vigie.store.migrations")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    if options.cmd[0].__name__ == "revision":
        options.autogenerate = True
    cli.run_cmd(alembic_config(default_database_url()), options)


if __name__ == "__main__":
    main(sys.argv[1:])
