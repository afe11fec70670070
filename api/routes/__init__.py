"""The service's routes, one module per resource, each with its ``APIRouter`` named ``router``
(``vigie.api.app.ROUTERS`` lists those the app includes)."""
