"""Analyze: upload a photo, get it back annotated with each face's emotion and a probability table.

The same analysis is served as JSON by `POST /api/analyze` (see app.py); both go through
`shared.analyze`, which refuses oversized, non-image, corrupt and decompression-bomb uploads.

Every refused upload gets a message on the page. The upload component filters nothing itself (a
file it rejects would vanish without a word): any file is read, a file over the size limit is
refused in the browser (its bytes never reach the server, whose request cap would answer 413 to a
callback nobody sees), and the server judges the type of everything else.
"""

from __future__ import annotations

import base64
import binascii

import cv2
from dash import Input, Output, State, dcc, html

from services.dashboard import ui
from services.dashboard.context import DashboardContext, SourceUnavailable
from shared.analyze import AnalyzeError, analyze_decoded, annotate, decode_image
from shared.emotions import EMOTIONS

NAME = "analyze"
PATH = "/analyze"
TITLE = "Analyze"


def layout(ctx: DashboardContext, query: dict) -> html.Div:
    limit_mb = ctx.settings.dashboard.max_upload_bytes / 1024 / 1024
    return html.Div([
        ui.page_header("Analyze a photo", "Faces are detected and classified on the server; nothing is stored."),
        dcc.Upload(id="analyze-upload", className="upload", multiple=False,
                   children=html.Div([html.Div("⬆", className="upload-icon"),
                                      html.Div(["Drop a photo here or ", html.A("choose a file")]),
                                      html.Div(f"JPEG, PNG, BMP or WebP, up to {limit_mb:.0f} MB",
                                               className="upload-hint")])),
        dcc.Store(id="analyze-limit", data=ctx.settings.dashboard.max_upload_bytes),
        dcc.Store(id="analyze-payload"),
        html.Div(id="analyze-client-banner"),
        html.Div(id="analyze-banner"),
        dcc.Loading(html.Div(id="analyze-result"), type="dot"),
    ])


# In the browser: pass an upload on to the server only when it is within the size limit, else say
# why right away. The size is the decoded length of the data URL's base64 part.
SIZE_CHECK = """
function(contents, filename, limit) {
    if (!contents) { return [window.dash_clientside.no_update, null, ""]; }
    const encoded = contents.slice(contents.indexOf(",") + 1);
    const padding = encoded.endsWith("==") ? 2 : (encoded.endsWith("=") ? 1 : 0);
    const size = Math.floor(encoded.length * 3 / 4) - padding;
    if (size > limit) {
        const mb = (n) => (n / 1048576).toFixed(1) + " MB";
        const message = (filename || "upload") + ": image of " + mb(size) + " exceeds the limit of " + mb(limit)
            + "; nothing was sent";
        return [null, message, "banner banner-warning"];
    }
    return [{contents: contents, filename: filename}, null, ""];
}
"""


def probability_table(result) -> html.Div:
    rows = []
    for index, face in enumerate(result.faces):
        cells = [f"#{index + 1}", ui.chip(face.label), f"{face.box.x},{face.box.y} {face.box.w}×{face.box.h}"]
        for emotion in EMOTIONS:
            p = face.probabilities[emotion]
            cells.append(html.Span(f"{p:.1%}", className="prob best" if emotion == face.label else "prob"))
        rows.append(cells)
    return ui.table(["face", "label", "box", *EMOTIONS], rows, class_name="prob-table",
                    empty="No face found in this image")


def register(app, ctx: DashboardContext) -> None:
    app.clientside_callback(SIZE_CHECK, Output("analyze-payload", "data"), Output("analyze-client-banner", "children"),
                            Output("analyze-client-banner", "className"), Input("analyze-upload", "contents"),
                            State("analyze-upload", "filename"), State("analyze-limit", "data"),
                            prevent_initial_call=True)

    @app.callback(Output("analyze-result", "children"), Output("analyze-banner", "children"),
                  Input("analyze-payload", "data"), prevent_initial_call=True)
    def _analyze(payload):
        if not payload:
            return None, None  # refused in the browser: its message is already shown
        contents, filename = payload.get("contents"), payload.get("filename")
        if not contents:
            return None, ui.banner("the upload could not be read (empty)")
        _, _, encoded = contents.partition(",")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None, ui.banner("the upload could not be read (invalid encoding)")
        settings = ctx.settings.dashboard
        try:
            decoded = decode_image(data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)
            model = ctx.model()
            result = analyze_decoded(decoded, ctx.detector(), model)
        except AnalyzeError as exc:
            return None, ui.banner(f"{filename or 'upload'}: {exc}", "warning")
        except SourceUnavailable as exc:
            return None, ui.banner(str(exc))
        ok, jpeg = cv2.imencode(".jpg", annotate(decoded, result), [cv2.IMWRITE_JPEG_QUALITY, 88])
        src = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode() if ok else ""
        answered = f"model {result.model_version}" + (f" ({result.model_role}" if result.model_role else "")
        answered += (f", {result.tta} TTA" if result.tta != "none" else "") + (")" if result.model_role else "")
        summary = (f"{len(result.faces)} face(s) in {filename or 'the upload'} ({result.width}×{result.height}), "
                   f"answered by {answered}")
        return html.Div(className="grid-2 analyze-grid", children=[
            ui.card("Annotated", html.Img(src=src, id="analyze-image", className="analyzed",
                                          alt="annotated upload")),
            ui.card("Per-face probabilities", html.P(summary, id="analyze-summary", className="summary"),
                    probability_table(result)),
        ]), None
