"""The dashboard's JSON API, versioned under /api/v1/ and described by /api/v1/openapi.json.

- `models`: query and response models (pydantic); the OpenAPI schemas are generated from them;
- `resources`: one function per resource (events, sessions, aggregates, cameras, models, health);
- `stream`: the live feed (server-sent events from the events stream);
- `routes`: the operation table, validation, JSON errors, and `install(server, ctx)`;
- `openapi`: the OpenAPI 3.1 document.

The existing `POST /api/analyze` stays routed by services.dashboard.app and is documented here.
"""

from services.dashboard.api.routes import install

__all__ = ["install"]
