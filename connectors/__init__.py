"""Feed readers: each turns one hospital format into facts (``vigie.facts``).

One package or module per feed — ``hl7v2`` (HL7 v2 files and MLLP batches), ``fhir`` (FHIR R4
Bundles and Bulk NDJSON), ``tabular`` (CSV exports read through a TOML mapping), ``hprim``
(HPRIM Santé), ``pn13`` (PN13 XML) — each implementing the ``Connector`` protocol of ``base``
(``feed``, ``sniff``, ``split``, ``parse``); ``registry`` finds the one for a format.
Connectors know nothing of the store, the rules or the engine.
"""

__all__: list[str] = []
