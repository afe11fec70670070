"""Vigie: open-source clinical pharmacy decision support (SADP).

The repository's top-level folders are installed as the subpackages of ``vigie`` (the links in
this folder point at them), so that nothing lands in site-packages under a bare name:

==========================  ================================================================
``vigie.facts``             the canonical fact model (a leaf: imports nothing of the project)
``vigie.terminology``       code and unit tables as data files, with their loader
``vigie.connectors``        one package or module per feed: ``hl7v2``, ``fhir``, ``tabular``
                            (CSV exports), ``hprim``, ``pn13``
``vigie.store``             raw messages, dead letters and facts in SQLite or PostgreSQL
``vigie.ingest``            feed files → raw messages → connectors → facts → store
``vigie.rules``             the rule language (grammar → parser → check → IR), the packs and
                            the rule-test runner
``vigie.engine``            the evaluator reading the IR, alerts, the data-quality report
``vigie.synthetic``         the synthetic hospital generator
``vigie.api``               the command line (and the HTTP service to come)
==========================  ================================================================

This folder's own modules are what every package shares, and import nothing of the project:
``vigie.settings`` (every ``VIGIE_*`` variable, with its type, default and doc),
``vigie.errors`` (``VigieError``, the root of every error Vigie raises) and
``vigie.ir_schema`` (the compiled rules' intermediate form, between ``rules`` and ``engine``).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
