"""Vigie: open-source clinical pharmacy decision support (SADP).

The repository's top-level folders are installed as the subpackages of ``vigie`` (the links in
this folder point at them), so that nothing lands in site-packages under a bare name:

==========================  ================================================================
``vigie.facts``             the canonical fact model (a leaf: imports nothing of the project)
``vigie.terminology``       code and unit tables as data files, with their loader
``vigie.connectors``        one package or module per feed: ``hl7v2``, ``fhir``, ``tabular``
                            (CSV exports), ``hprim``, ``pn13``
``vigie.store``             raw messages, dead letters and facts in SQLite or PostgreSQL
``vigie.rules``             the rule language (grammar → parser → check → IR), the packs and
                            the rule-test runner
``vigie.engine``            the evaluator reading the IR, alerts, the data-quality report
``vigie.synthetic``         the synthetic hospital generator
``vigie.api``               the command line and the ingest pipeline
==========================  ================================================================
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
