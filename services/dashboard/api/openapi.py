"""The OpenAPI 3.1 document, generated from the operation table and the pydantic models.

Pydantic writes JSON Schema 2020-12, which is OpenAPI 3.1's schema dialect, so response schemas are used
as they are (under components/schemas); query models become one parameter per field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from services.dashboard.api.models import API_VERSION, MAX_PAGE, Error, Event, StreamEnd, StreamId
from shared.settings import DashboardSettings

REF = "#/components/schemas/{model}"
STREAM_ID = TypeAdapter(StreamId).json_schema()["pattern"]
ERROR_TEXT = {400: "Invalid parameters (the first problem in `error`, all in `details`)",
              401: "No valid token (see the security schemes)", 404: "Not found",
              413: "Upload too large", 415: "Not a JPEG, PNG, BMP or WebP image",
              422: "Image dimensions over the pixel limit (decompression bomb)",
              503: "Redis, the store or the model cannot answer right now (retry)"}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <token>"},
    "basic": {"type": "http", "scheme": "basic", "description": "basic auth whose password is the token (or "
                                                                "user:password when the token is written that way)"},
    "token": {"type": "apiKey", "in": "query", "name": "token", "description": "?token=<token> on any URL"},
}


def _parameter_schema(schema: dict) -> dict:
    """A query model's field schema as a parameter schema: a parameter is absent, never null."""
    schema = {k: v for k, v in schema.items() if k not in ("title", "description")}
    if schema.get("default", "") is None:
        del schema["default"]
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if branches:
        schema.update(branches[0] if len(branches) == 1 else {"anyOf": branches})
    return schema


def query_parameters(model: type[BaseModel] | None) -> list[dict]:
    if model is None:
        return []
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required,
             "description": prop.get("description", ""), "schema": _parameter_schema(prop)}
            for name, prop in schema.get("properties", {}).items()]


def path_parameters(types: dict[str, Any]) -> list[dict]:
    out = []
    for name, kind in types.items():
        schema = TypeAdapter(kind).json_schema()
        out.append({"name": name, "in": "path", "required": True, "description": schema.get("description", ""),
                    "schema": _parameter_schema(schema)})
    return out


def sse_event_schema(ref: dict) -> dict:
    """One event of the live feed: its `event` name says which JSON object its `data` holds."""
    def kind(name: str, model: type[BaseModel], what: str) -> dict:
        return {"type": "object", "description": what, "required": ["event", "data"],
                "properties": {"event": {"const": name}, "id": {"type": "string", "pattern": STREAM_ID},
                               "data": {"type": "string", "contentMediaType": "application/json",
                                        "contentSchema": ref[model]}}}
    return {"oneOf": [kind("emotion", Event, "an emotion event; `id` is its events-stream entry id"),
                      kind("end", StreamEnd, "the feed reached its maximum duration"),
                      kind("error", Error, "Redis stopped answering; reconnect later")]}


def _json(ref: dict) -> dict:
    return {"application/json": {"schema": ref}}


def openapi_document(operations, dashboard: DashboardSettings) -> dict:
    models = [Error, Event, StreamEnd, *(op.response for op in operations if op.response is not None)]
    refs, top = models_json_schema([(m, "serialization") for m in dict.fromkeys(models)], ref_template=REF)
    ref = {model: refs[(model, "serialization")] for model, _mode in refs}
    secured = bool(dashboard.auth_token)
    paths: dict[str, dict] = {}
    for op in operations:
        responses: dict[str, Any] = {}
        if op.stream:
            responses["200"] = {"description": "Server-sent events (the schema describes one event)",
                                "content": {"text/event-stream": {"schema": sse_event_schema(ref)}}}
        elif op.response is None:
            responses["200"] = {"description": op.summary, "content": _json({"type": "object"})}
        else:
            responses["200"] = {"description": op.summary, "content": _json(ref[op.response])}
        for status in sorted({*op.errors, *((401,) if secured else ())}):
            responses[str(status)] = {"description": ERROR_TEXT[status], "content": _json(ref[Error])}
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                                     "description": op.description, "tags": [op.tag], "responses": responses}
        parameters = path_parameters(op.path_params) + query_parameters(op.query)
        if op.stream:
            parameters.append({"name": "Last-Event-ID", "in": "header", "required": False,
                               "description": "resume after this entry (EventSource sends it on reconnect)",
                               "schema": {"type": "string", "pattern": STREAM_ID}})
        if parameters:
            operation["parameters"] = parameters
        if op.upload_field:
            operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": [op.upload_field],
                "properties": {op.upload_field: {"type": "string", "format": "binary", "description":
                                                 f"at most {dashboard.max_upload_bytes:,} bytes"}}}}}}
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Emotion platform API", "version": API_VERSION, "description": (
            "Read what the platform records (events, sessions, aggregates), what it runs (cameras, models, "
            "pipeline health), follow events live, and analyze a photo. Times are ISO 8601 UTC; a date-time "
            "without an offset is read as UTC; ranges are [start, end). Lists are bounded: at most "
            f"{MAX_PAGE} events per page (keyset pagination through `next_cursor`), {MAX_PAGE} sessions, "
            "10,000 aggregate buckets. Errors are JSON objects with a one-line `error`. Unknown paths under "
            "/api/ answer 404 and wrong methods 405, as JSON.")},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}), "securitySchemes": SECURITY_SCHEMES},
    }
    if secured:
        document["security"] = [{name: []} for name in SECURITY_SCHEMES]
    return document


def main() -> None:
    """`python -m services.dashboard.api.openapi > docs/openapi.json`: the document with default settings."""
    import json

    from services.dashboard.api.routes import OPERATIONS

    print(json.dumps(openapi_document(OPERATIONS, DashboardSettings()), indent=2))


if __name__ == "__main__":
    main()
