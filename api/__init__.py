"""The command line (``vigie``, in ``cli``) and the ingest pipeline it drives (``ingest``)."""

__all__: list[str] = []
