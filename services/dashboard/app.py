"""The dashboard: one multi-page Dash app built by `create_app(settings)`, served by `serve()`.

Pages live one per module in `services.dashboard.pages`; each has PATH, TITLE, `layout(ctx, query)`
and `register(app, ctx)` for its callbacks. Routing is a plain dcc.Location callback, so building the
app has no import-time side effects and two apps (tests) can coexist in one process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs

import dash
from dash import Input, Output, dcc, html
from flask import jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from services.dashboard import auth
from services.dashboard.context import DashboardContext, SourceUnavailable
from services.dashboard.pages import PAGES
from shared.settings import Settings

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parent / "assets"


def create_app(settings: Settings) -> dash.Dash:
    """A ready-to-serve Dash app; raises AuthConfigError when a non-local host has no token."""
    auth.check_auth_config(settings)
    ctx = DashboardContext(settings)
    app = dash.Dash(__name__, title="Emotion platform", assets_folder=str(ASSETS), update_title=None,
                    suppress_callback_exceptions=True, serve_locally=True)
    app.server.config["MAX_CONTENT_LENGTH"] = settings.dashboard.max_upload_bytes * 4 // 3 + 1024 * 1024
    app.server.extensions["emotion_dashboard"] = ctx
    app.server.json.sort_keys = False  # keep probabilities in FER order
    auth.install(app.server, settings.dashboard.auth_token)
    _install_api(app, ctx)

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
        return jsonify(ok=True)

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
    """Serve the app with waitress when installed (production-capable), else Flask's threaded server."""
    host = host or settings.dashboard.host
    port = port or settings.dashboard.port
    settings = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(update={"host": host,
                                                                                             "port": port})})
    app = create_app(settings)
    try:
        from waitress import serve as waitress_serve
    except ImportError:
        log.info("event=dashboard_start server=flask host=%s port=%d", host, port)
        app.server.run(host=host, port=port, threaded=True)
        return
    log.info("event=dashboard_start server=waitress host=%s port=%d", host, port)
    waitress_serve(app.server, host=host, port=port, threads=8, channel_timeout=30, ident="emotion-dashboard")
