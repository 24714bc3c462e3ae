"""One router per resource; `ferry.server.app` includes them under ``/api/v1``."""
