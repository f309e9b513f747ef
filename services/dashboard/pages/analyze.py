"""Analyze: upload a photo, get it back annotated with each face's emotion and a probability table.

The same analysis is served as JSON by `POST /api/analyze` (see app.py); both go through
`shared.analyze`, which refuses oversized, non-image, corrupt and decompression-bomb uploads.
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
                   accept="image/jpeg,image/png,image/bmp,image/webp",
                   children=html.Div([html.Div("⬆", className="upload-icon"),
                                      html.Div(["Drop a photo here or ", html.A("choose a file")]),
                                      html.Div(f"JPEG, PNG, BMP or WebP, up to {limit_mb:.0f} MB",
                                               className="upload-hint")])),
        html.Div(id="analyze-banner"),
        dcc.Loading(html.Div(id="analyze-result"), type="dot"),
    ])


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
    @app.callback(Output("analyze-result", "children"), Output("analyze-banner", "children"),
                  Input("analyze-upload", "contents"), State("analyze-upload", "filename"),
                  prevent_initial_call=True)
    def _analyze(contents, filename):
        if not contents:
            return None, None
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
        summary = (f"{len(result.faces)} face(s) in {filename or 'the upload'} ({result.width}×{result.height}), "
                   f"model {result.model_version}")
        return html.Div(className="grid-2 analyze-grid", children=[
            ui.card("Annotated", html.Img(src=src, id="analyze-image", className="analyzed",
                                          alt="annotated upload")),
            ui.card("Per-face probabilities", html.P(summary, id="analyze-summary", className="summary"),
                    probability_table(result)),
        ]), None
