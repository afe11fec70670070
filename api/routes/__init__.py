"""The service's routes, one module per resource, each with its ``APIRouter`` named ``router``
(the app includes every module's: a new resource is a new module here)."""
