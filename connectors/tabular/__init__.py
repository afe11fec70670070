"""CSV export connector driven by TOML mapping files (``mappings/``).

The ``Connector`` protocol is implemented in ``vigie.connectors.tabular.connector``.
"""

from vigie.connectors.tabular.connector import (
    CANONICAL_FILES,
    MappingError,
    TabularConnector,
    TabularMapping,
    configure,
    default_connector,
    feed,
    load_mapping,
    parse,
    parse_number,
    sniff,
    split,
    write_canonical_csv,
)

__all__ = [
    "CANONICAL_FILES",
    "MappingError",
    "TabularConnector",
    "TabularMapping",
    "configure",
    "default_connector",
    "feed",
    "load_mapping",
    "parse",
    "parse_number",
    "sniff",
    "split",
    "write_canonical_csv",
]
