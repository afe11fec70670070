"""The pharmacist's web page: its static files (served by ``vigie.api.routes.web``)."""
