"""One APIRouter per resource; routes only parse, call a service function and shape the answer."""
