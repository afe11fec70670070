"""Imported once by the forkserver the MLLP parse workers are forked from
(``vigie.ingest.mllp_worker.worker_context``): the parse's modules and the code tables read
here are in every worker's memory from its start (a fresh interpreter spends 1.5 s on them,
while the first messages wait for their parse)."""

from vigie.ingest.mllp_worker import load_code_tables

load_code_tables()
