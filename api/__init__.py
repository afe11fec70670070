"""The command line (``vigie``, in ``cli``); the HTTP service comes beside it."""

__all__: list[str] = []
