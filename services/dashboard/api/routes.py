"""The API's routes: one table of operations, from which both the Flask routes and the OpenAPI
document are made, so a route cannot exist undocumented or be documented differently.

Every answer under /api/ is JSON (or SSE): bad parameters are a 400 with the first problem in one line
and every problem in `details`; an unknown path is a 404 and a known path with the wrong method a 405
(with Allow), never the dashboard's HTML page; an unreachable Redis or store is a 503.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, TypeAdapter, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from services.dashboard.api import resources
from services.dashboard.api.models import (MAX_PAGE, Aggregates, AggregatesQuery, CameraList, EventsPage, EventsQuery,
                                           Health, ModelsReport, NoQuery, SessionId, SessionList, SessionReport,
                                           SessionsQuery, StreamId, StreamQuery)
from services.dashboard.api.stream import StreamSlots, event_feed, start_id
from services.dashboard.context import DashboardContext, SourceUnavailable
from shared.analyze import AnalyzeResult
from shared.shards import parse_position

log = logging.getLogger(__name__)

OPENAPI_PATH = "/api/v1/openapi.json"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
AUTH_PARAMETER = "token"  # services.dashboard.auth reads it; it is never an API parameter


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: list[dict] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details, self.headers = status, message, details, headers or {}


@dataclass(frozen=True)
class Operation:
    """One documented route. `handler(ctx, query, **path)` returns a response model (None: 404)."""

    path: str  # OpenAPI path template, e.g. /api/v1/sessions/{session_id}
    method: str
    operation_id: str
    summary: str
    description: str
    tag: str
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    handler: Callable[..., Any] | None = None
    errors: tuple[int, ...] = (400, 503)
    path_params: dict[str, Any] = field(default_factory=dict)  # name -> pydantic type
    not_found: Callable[..., str] | None = None  # the 404 message when the handler finds nothing
    stream: bool = False  # text/event-stream instead of JSON
    upload_field: str | None = None  # multipart/form-data file field of the request body
    served_elsewhere: bool = False  # documented here, routed by services.dashboard.app

    @property
    def flask_rule(self) -> str:
        rule = self.path
        for name in self.path_params:
            rule = rule.replace("{" + name + "}", f"<{name}>")
        return rule


def _session_not_found(session_id: str) -> str:
    return f"no session {session_id!r} in the store (GET /api/v1/sessions lists them)"


OPERATIONS: tuple[Operation, ...] = (
    Operation("/api/v1/events", "GET", "listEvents", "Events in a time range",
              f"Recorded events in [start, end), oldest first, filtered by camera, session and label. Pages hold at "
              f"most {MAX_PAGE} events; pass `next_cursor` back as `cursor` for the next one (keyset pagination: "
              "no event is skipped or repeated while new ones arrive).",
              "events", EventsQuery, EventsPage, resources.events),
    Operation("/api/v1/events/stream", "GET", "streamEvents", "Live feed of emotion events (server-sent events)",
              "Events as they are classified, as `text/event-stream`: `event: emotion` messages whose `data` is an "
              "Event (as in listEvents, `recorded` null) and whose `id` is the events-stream entry id; comment lines "
              "as heartbeats; a final `event: end` after the configured maximum duration. Without Last-Event-ID "
              "the feed starts at new events; with it (header, or `last_event_id`), just after that entry. At most "
              "`dashboard.max_streams` feeds run at once (503 beyond).",
              "events", StreamQuery, None, None, (400, 503), stream=True),
    Operation("/api/v1/sessions", "GET", "listSessions", "Sessions", "Recorded sessions, most recent first.",
              "sessions", SessionsQuery, SessionList, resources.sessions),
    Operation("/api/v1/sessions/{session_id}", "GET", "getSessionReport", "One session's report",
              "Counts and shares per emotion, and the timeline (counts and mean probabilities per bucket), as the "
              "dashboard's session report shows them.",
              "sessions", NoQuery, SessionReport, resources.session_report, (400, 404, 503),
              path_params={"session_id": SessionId}, not_found=_session_not_found),
    Operation("/api/v1/aggregates", "GET", "getAggregates", "Counts and mean probabilities per minute, hour or day",
              "Exact aggregates of [start, end) from the minute rollups (raw events only at the range's partial "
              "minutes); at most 10,000 buckets per request.",
              "aggregates", AggregatesQuery, Aggregates, resources.aggregates),
    Operation("/api/v1/cameras", "GET", "listCameras", "Cameras",
              "Every camera the store has events of or that a running capture registered, with its live state.",
              "cameras", NoQuery, CameraList, resources.cameras),
    Operation("/api/v1/models", "GET", "getModels", "Models: current per role, and versions",
              "For each role (fast: live classifiers; accurate: photo and offline analysis) the promoted version and "
              "the model that answers now; every registered version with its metrics.",
              "models", NoQuery, ModelsReport, resources.models),
    Operation("/api/v1/health", "GET", "getHealth", "Pipeline health",
              "Per stage: replicas, input stream length, consumer-group lag and pending, dead letters, cumulative "
              "counters; live heartbeats; capture-to-event latency over the last minute.",
              "health", NoQuery, Health, resources.health),
    Operation("/api/analyze", "POST", "analyzeImage", "Analyze a photo",
              "Faces and their emotion probabilities in an uploaded image (JPEG, PNG, BMP or WebP), sent as the "
              "multipart/form-data field `image`. Answers `faces` (box, detection confidence, label, confidence, "
              "probabilities), the model version and the image's size and format.",
              "analyze", None, AnalyzeResult, None, (400, 413, 415, 422, 503), upload_field="image",
              served_elsewhere=True),
    Operation(OPENAPI_PATH, "GET", "getOpenApi", "This document", "The OpenAPI 3.1 document of this API.",
              "meta", NoQuery, None, None, (400,)),
)


# --- request handling ---------------------------------------------------------------------------

def _problems(exc: ValidationError) -> tuple[str, list[dict]]:
    details = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or None
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown parameter (the parameters are listed in {OPENAPI_PATH})"
        details.append({"parameter": where, "message": message, "type": error["type"]})
    first = details[0]
    line = f"invalid parameter {first['parameter']!r}: {first['message']}" if first["parameter"] \
        else f"invalid parameters: {first['message']}"
    return line, details


def parse_query(model: type[BaseModel] | None) -> BaseModel | None:
    if model is None:
        return None
    values: dict[str, str] = {}
    for name, given in request.args.lists():
        if name == AUTH_PARAMETER:
            continue
        if len(given) > 1:
            raise ApiError(400, f"invalid parameter {name!r}: given {len(given)} times, expected once")
        values[name] = given[0]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ApiError(400, *_problems(exc)) from None


def parse_value(kind: Any, value: str, what: str) -> Any:
    """`value` validated as the pydantic type `kind`; `what` names it in the 400 ("header 'X'")."""
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        _line, details = _problems(exc)
        for detail in details:
            detail["parameter"] = what
        raise ApiError(400, f"invalid {what}: {details[0]['message']}", details) from None


def parse_path(types: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    return {name: parse_value(kind, values[name], f"path parameter {name!r}") for name, kind in types.items()}


def json_response(body: BaseModel | dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body)
    return Response(text, status=status, mimetype="application/json", headers=headers)


def error_response(status: int, message: str, details: list[dict] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return json_response(body, status, headers)


def allowed_methods(path: str, catch_all: str) -> list[str]:
    """Methods that some real route (not the catch-all) serves at `path`."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in METHODS:
        try:
            endpoint, _args = adapter.match(path, method=method)
        except (HTTPException, RequestRedirect):
            continue
        if endpoint != catch_all:
            allowed.append(method)
    return allowed


def allow_header(allowed: list[str]) -> str:
    return ", ".join([*allowed, *(["HEAD"] if "GET" in allowed else []), "OPTIONS"])


def make_blueprint(ctx: DashboardContext, document: dict) -> Blueprint:
    bp = Blueprint("api", __name__)
    slots = StreamSlots(ctx.settings.dashboard.max_streams)

    def json_view(op: Operation) -> Callable[..., Response]:
        def view(**path_values):
            query = parse_query(op.query)
            args = parse_path(op.path_params, path_values)
            result = op.handler(ctx, query, **args)
            if result is None:
                raise ApiError(404, op.not_found(**args))
            return json_response(result)
        return view

    def stream_view() -> Response:
        query = parse_query(StreamQuery)
        header = request.headers.get("Last-Event-ID")
        last_id = query.last_event_id
        if header is not None:
            last_id = parse_value(StreamId, header.strip(), "header 'Last-Event-ID'")
        if last_id is not None:
            try:
                parse_position(last_id, ctx.keys.shards)
            except ValueError as exc:
                raise ApiError(400, f"Last-Event-ID {last_id}: {exc}") from None
        release = slots.acquire()
        if release is None:
            raise ApiError(503, f"all {slots.limit} live feeds are in use; retry shortly",
                           headers={"Retry-After": str(max(1, int(ctx.settings.dashboard.stream_heartbeat_s)))})
        try:
            after = last_id or ctx.redis_call(lambda client: start_id(client, ctx.keys))
        except BaseException:
            release()
            raise
        d = ctx.settings.dashboard
        feed = event_feed(ctx.redis, ctx.keys, after=after, camera=query.camera, max_s=d.stream_max_s,
                          heartbeat_s=d.stream_heartbeat_s, redis_url=ctx.settings.redis_url)
        response = Response(_released_after(feed, release), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # The server closes the response when the client goes or the feed ends, even if it never started.
        response.call_on_close(release)
        return response

    for op in OPERATIONS:
        if op.served_elsewhere:
            continue
        if op.stream:
            view = stream_view
        elif op.path == OPENAPI_PATH:
            view = lambda: json_response(document)  # noqa: E731
        else:
            view = json_view(op)
        bp.add_url_rule(op.flask_rule, endpoint=op.operation_id, view_func=view, methods=[op.method])

    catch_all = f"{bp.name}.unknown"

    def unknown(rest: str = "") -> Response:
        allowed = allowed_methods(request.path, catch_all)
        if allowed:
            return error_response(405, f"{request.method} is not allowed on {request.path}; use "
                                       f"{', '.join(allowed)}", headers={"Allow": allow_header(allowed)})
        return error_response(404, f"no API route at {request.path} (the routes are listed in {OPENAPI_PATH})")

    for rule in ("/api", "/api/", "/api/<path:rest>"):
        bp.add_url_rule(rule, endpoint="unknown", view_func=unknown, methods=[*METHODS, "OPTIONS"],
                        provide_automatic_options=False)

    @bp.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.details, exc.headers)

    @bp.errorhandler(SourceUnavailable)
    def _unavailable(exc: SourceUnavailable):
        # One line: a driver's message can go on with the SQL it failed on (the log has all of it).
        return error_response(503, str(exc).splitlines()[0], headers={"Retry-After": "2"})

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

    @bp.errorhandler(Exception)
    def _bug(exc: Exception):
        log.error("event=api_error path=%s error=%r", request.path, exc, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the dashboard's log has the details")

    return bp


def _released_after(feed, release: Callable[[], None]):
    try:
        yield from feed
    finally:
        release()


def install(server: Flask, ctx: DashboardContext) -> Blueprint:
    """Register the API on the dashboard's Flask server (after services.dashboard.auth.install)."""
    from services.dashboard.api.openapi import openapi_document

    bp = make_blueprint(ctx, openapi_document(OPERATIONS, ctx.settings.dashboard))
    server.register_blueprint(bp)

    @server.after_request
    def _api_allow(response: Response) -> Response:
        # Flask answers OPTIONS itself with every method of every rule matching the path, the catch-all's
        # included: list only what the real route serves (here and on /api/analyze, routed by app.py).
        if request.method == "OPTIONS" and request.path.startswith("/api/") and response.status_code == 200:
            response.headers["Allow"] = allow_header(allowed_methods(request.path, f"{bp.name}.unknown"))
        return response

    return bp
