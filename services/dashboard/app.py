"""The dashboard: one multi-page Dash app built by `create_app(settings)`, served by `serve()`.

Pages live one per module in `services.dashboard.pages`; each has PATH, TITLE, `layout(ctx, query)`
and `register(app, ctx)` for its callbacks. Routing is a plain dcc.Location callback, so building the
app has no import-time side effects and two apps (tests) can coexist in one process.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from urllib.parse import parse_qs

import dash
from dash import Input, Output, dcc, html
from flask import Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from services.dashboard import api, auth
from services.dashboard.context import DashboardContext, SourceUnavailable
from services.dashboard.pages import PAGES
from shared.metrics import pipeline_metrics, render
from shared.settings import Settings

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parent / "assets"


class ListenError(OSError):
    """The dashboard cannot listen on its address (port taken, address not on this machine)."""


def create_app(settings: Settings) -> dash.Dash:
    """A ready-to-serve Dash app; raises AuthConfigError when a non-local host has no (strong) token.

    `settings.dashboard.auth_token` is the token enforced; `serve()` first fills it from the token
    file when one is configured (auth.resolve_token)."""
    auth.check_auth_config(settings)
    if settings.dashboard.auth_token is None and settings.dashboard.host not in auth.LOCAL_HOSTS:
        raise auth.AuthConfigError("the token file has not been read: serve() resolves it before create_app()")
    ctx = DashboardContext(settings)
    app = dash.Dash(__name__, title="Emotion platform", assets_folder=str(ASSETS), update_title=None,
                    suppress_callback_exceptions=True, serve_locally=True)
    app.server.config["MAX_CONTENT_LENGTH"] = settings.dashboard.max_upload_bytes * 4 // 3 + 1024 * 1024
    app.server.extensions["emotion_dashboard"] = ctx
    app.server.json.sort_keys = False  # keep probabilities in FER order
    auth.install(app.server, settings.dashboard.auth_token, settings.dashboard.allowed_hosts)
    _install_api(app, ctx)
    api.install(app.server, ctx)  # /api/v1/*: the JSON API, its live feed and OpenAPI document

    nav = [dcc.Link(page.TITLE, href=page.PATH, id=f"nav-{page.NAME}", className="nav-link") for page in PAGES]
    app.layout = html.Div(className="shell", children=[
        dcc.Location(id="url", refresh=False),
        html.Header(className="topbar", children=[
            html.Div(className="brand", children=[html.Span("◉", className="brand-mark"),
                                                  html.Span("Emotion platform")]),
            html.Nav(nav, className="nav"),
        ]),
        html.Main(id="page", className="page"),
    ])

    @app.callback(Output("page", "children"), *[Output(f"nav-{p.NAME}", "className") for p in PAGES],
                  Input("url", "pathname"), Input("url", "search"))
    def _route(pathname, search):
        path = (pathname or "/").rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}
        query.pop("token", None)
        page = next((p for p in PAGES if path == p.PATH or (path == "/" and p.NAME == "live")), None)
        classes = ["nav-link active" if p is page else "nav-link" for p in PAGES]
        if page is None:
            return html.Div(className="card empty", children=[html.H2("Page not found"),
                                                               html.P(f"No page at {path}.")]), *classes
        return page.layout(ctx, query), *classes

    for page in PAGES:
        page.register(app, ctx)
    return app


def _install_api(app: dash.Dash, ctx: DashboardContext) -> None:
    from shared.analyze import AnalyzeError, analyze_image

    server = app.server

    @server.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc):
        return jsonify(error=f"upload exceeds {ctx.settings.dashboard.max_upload_bytes} bytes"), 413

    @server.route("/healthz")
    def _healthz():
        """Liveness: the process serves requests (what it depends on is /readyz's business). The pid
        tells `emotion up` that the answer is its own child's, not another server's on the same port."""
        return jsonify(ok=True, pid=os.getpid())

    @server.route("/readyz")
    def _readyz():
        """Readiness: Redis and the store answer and the model is loaded; 503 with what is not.
        Answered without a token, so it names components and states only, never an address."""
        checks = ctx.readiness()
        ready = all(state == "ok" for state in checks.values())
        return jsonify(ready=ready, checks=checks), 200 if ready else 503

    metrics = pipeline_metrics(ctx.redis, ctx.keys)

    @server.route("/metrics")
    def _metrics():
        """Prometheus: the pipeline as Redis shows it (group lag, pending, replicas) and this process.
        Answered without a token, like the probes: counts only, no camera, address or secret."""
        body, content_type = render(metrics, request.headers.get("Accept", ""))
        return Response(body, content_type=content_type)

    @server.route("/api/analyze", methods=["POST"])
    def _analyze():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="send the image as multipart/form-data field 'image'"), 400
        limit = ctx.settings.dashboard.max_upload_bytes
        data = upload.stream.read(limit + 1)  # never read more than one byte past the limit
        try:
            model = ctx.model()
            detector = ctx.detector()
            result = analyze_image(data, detector, model, max_bytes=limit,
                                   max_pixels=ctx.settings.dashboard.max_upload_pixels)
        except AnalyzeError as exc:
            return jsonify(error=str(exc)), exc.status
        except SourceUnavailable as exc:
            return jsonify(error=str(exc)), 503
        log.info("event=analyze faces=%d model=%s", len(result.faces), result.model_version)
        return jsonify(result.model_dump(mode="json"))


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the app with waitress when installed (production-capable), else Flask's threaded server.

    Raises AuthConfigError (no or weak token beyond localhost) or ListenError (port taken) before
    serving anything. A token generated into `dashboard.token_file` is announced once, with its
    login URL, on stderr (the container's log)."""
    host = host or settings.dashboard.host
    port = port or settings.dashboard.port
    settings = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(update={"host": host,
                                                                                             "port": port})})
    settings, generated = auth.resolve_token(settings)
    app = create_app(settings)
    if generated:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        base = (settings.dashboard.public_url or f"http://{shown}:{port}").rstrip("/")
        print(f"emotion dashboard: generated an access token, kept in {settings.dashboard.token_file}; log in at "
              f"{base}/?token={settings.dashboard.auth_token}", file=sys.stderr, flush=True)
    elif settings.dashboard.token_file is not None and settings.dashboard.auth_token:
        log.info("event=dashboard_token source=file path=%s", settings.dashboard.token_file)
    listening = f"emotion dashboard: listening on http://{host}:{port}/"
    try:
        from waitress import create_server
    except ImportError:
        log.info("event=dashboard_start server=flask host=%s port=%d", host, port)
        print(listening, flush=True)
        app.server.run(host=host, port=port, threaded=True)
        return
    try:
        server = create_server(app.server, host=host, port=port, threads=8, channel_timeout=30,
                               ident="emotion-dashboard")
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    log.info("event=dashboard_start server=waitress host=%s port=%d", host, port)
    print(listening, flush=True)  # only now: the port is ours
    server.run()
