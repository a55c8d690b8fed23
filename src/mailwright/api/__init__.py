"""The REST API (FastAPI): /api/v1/…, OpenAPI at /api/openapi.json."""
