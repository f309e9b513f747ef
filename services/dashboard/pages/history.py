"""History: what the recorder stored, for a time range and camera: stacked counts per bucket, shares,
mean probabilities over time, and a CSV of exactly what is shown."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
from dash import Input, Output, State, dcc, html, no_update

from shared.store.queries import auto_bucket
from services.dashboard import ui
from services.dashboard.charts import empty_figure, probabilities_figure, shares_figure, stacked_counts_figure
from services.dashboard.context import DashboardContext, SourceUnavailable

NAME = "history"
PATH = "/history"
TITLE = "History"
ALL = "__all__"
RANGES = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "6h": timedelta(hours=6),
          "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
RANGE_LABELS = {"15m": "Last 15 minutes", "1h": "Last hour", "6h": "Last 6 hours", "24h": "Last 24 hours",
                "7d": "Last 7 days", "30d": "Last 30 days", "custom": "Custom range"}
BUCKETS = ("second", "minute", "hour", "day")
INPUT_FORMAT = "%Y-%m-%dT%H:%M"


def as_frame(value) -> pd.DataFrame:
    """Store queries return DataFrames; accept lists of dicts too, and None as empty."""
    if value is None:
        return pd.DataFrame()
    if isinstance(value, pd.DataFrame):
        return value
    return pd.DataFrame(list(value))


def camera_options(ctx: DashboardContext) -> list[dict]:
    options = [{"label": "All cameras", "value": ALL}]
    try:
        cameras = ctx.query("list_cameras")
    except SourceUnavailable:
        return options
    if isinstance(cameras, pd.DataFrame):
        column = "camera_id" if "camera_id" in cameras else cameras.columns[0] if len(cameras.columns) else None
        cameras = [] if column is None else cameras[column].tolist()
    return options + [{"label": str(c), "value": str(c)} for c in cameras]


def resolve_range(preset: str, start_text: str | None, end_text: str | None,
                  now: datetime | None = None) -> tuple[datetime, datetime]:
    """UTC (start, end) from a preset, or from the two datetime-local inputs (read as UTC)."""
    now = now or datetime.now(timezone.utc)
    if preset != "custom":
        return now - RANGES.get(preset, RANGES["1h"]), now
    try:
        start = datetime.strptime(start_text or "", INPUT_FORMAT).replace(tzinfo=timezone.utc)
        end = datetime.strptime(end_text or "", INPUT_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError("enter both ends of the custom range (UTC)") from None
    if end <= start:
        raise ValueError("the end of the range must be after its start")
    return start, end


def layout(ctx: DashboardContext, query: dict) -> html.Div:
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    return html.Div([
        ui.page_header("History", "Recorded events by time range and camera (times in UTC)."),
        html.Div(className="card toolbar", children=[
            html.Label(["Range", dcc.Dropdown(id="hist-range", value=query.get("range", "1h"), clearable=False,
                                              options=[{"label": v, "value": k} for k, v in RANGE_LABELS.items()])]),
            html.Label(["From (UTC)", dcc.Input(id="hist-start", type="datetime-local", debounce=True,
                                                value=(now - timedelta(hours=1)).strftime(INPUT_FORMAT))]),
            html.Label(["To (UTC)", dcc.Input(id="hist-end", type="datetime-local", debounce=True,
                                              value=now.strftime(INPUT_FORMAT))]),
            html.Label(["Bucket", dcc.Dropdown(id="hist-bucket", value="auto", clearable=False,
                                               options=[{"label": "auto", "value": "auto"}] +
                                                       [{"label": b, "value": b} for b in BUCKETS])]),
            html.Label(["Camera", dcc.Dropdown(id="hist-camera", value=ALL, clearable=False,
                                               options=camera_options(ctx))]),
            html.Div(className="toolbar-buttons", children=[
                html.Button("Refresh", id="hist-refresh", className="btn"),
                html.Button("Download CSV", id="hist-download-btn", className="btn btn-secondary"),
            ]),
            dcc.Download(id="hist-download"),
        ]),
        html.Div(id="hist-banner"),
        html.P(id="hist-summary", className="summary"),
        ui.card(None, dcc.Graph(id="hist-counts", figure=empty_figure("Loading…"), config={"displaylogo": False, "displayModeBar": "hover"})),
        html.Div(className="grid-2", children=[
            ui.card(None, dcc.Graph(id="hist-shares", figure=empty_figure("Loading…"),
                                    config={"displaylogo": False, "displayModeBar": "hover"})),
            ui.card(None, dcc.Graph(id="hist-probs", figure=empty_figure("Loading…"),
                                    config={"displaylogo": False, "displayModeBar": "hover"})),
        ]),
    ])


def history_frames(ctx: DashboardContext, start: datetime, end: datetime, bucket: str, camera: str | None):
    counts = as_frame(ctx.query("emotion_counts", start, end, bucket, camera_id=camera))
    shares = as_frame(ctx.query("emotion_shares", start, end, camera_id=camera))
    means = as_frame(ctx.query("mean_probabilities", start, end, bucket, camera_id=camera))
    return counts, shares, means


def _query_args(preset, start_text, end_text, bucket, camera):
    start, end = resolve_range(preset, start_text, end_text)
    bucket = auto_bucket(end - start) if bucket in (None, "auto") else bucket
    return start, end, bucket, None if camera in (None, ALL) else camera


def register(app, ctx: DashboardContext) -> None:
    @app.callback(Output("hist-counts", "figure"), Output("hist-shares", "figure"), Output("hist-probs", "figure"),
                  Output("hist-banner", "children"), Output("hist-summary", "children"),
                  Input("hist-range", "value"), Input("hist-start", "value"), Input("hist-end", "value"),
                  Input("hist-bucket", "value"), Input("hist-camera", "value"), Input("hist-refresh", "n_clicks"))
    def _update(preset, start_text, end_text, bucket, camera, _clicks):
        try:
            start, end, bucket, camera_id = _query_args(preset, start_text, end_text, bucket, camera)
        except ValueError as exc:
            return no_update, no_update, no_update, ui.banner(str(exc), "warning"), no_update
        try:
            counts, shares, means = history_frames(ctx, start, end, bucket, camera_id)
        except SourceUnavailable as exc:
            message = empty_figure("History unavailable")
            return message, message, message, ui.banner(str(exc)), ""
        total = int(counts["count"].sum()) if "count" in counts else 0
        summary = (f"{total:,} faces from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC, "
                   f"per {bucket}, {'all cameras' if camera_id is None else 'camera ' + camera_id}.")
        return (stacked_counts_figure(counts, f"Faces per {bucket}"), shares_figure(shares),
                probabilities_figure(means, f"Mean probability per {bucket}"), None, summary)

    @app.callback(Output("hist-download", "data"), Output("hist-banner", "children", allow_duplicate=True),
                  Input("hist-download-btn", "n_clicks"),
                  State("hist-range", "value"), State("hist-start", "value"), State("hist-end", "value"),
                  State("hist-bucket", "value"), State("hist-camera", "value"), prevent_initial_call=True)
    def _download(_clicks, preset, start_text, end_text, bucket, camera):
        try:
            start, end, bucket, camera_id = _query_args(preset, start_text, end_text, bucket, camera)
            counts, _shares, means = history_frames(ctx, start, end, bucket, camera_id)
        except ValueError as exc:
            return no_update, ui.banner(str(exc), "warning")
        except SourceUnavailable as exc:
            return no_update, ui.banner(str(exc))
        frame = counts
        if not frame.empty and not means.empty and not any(c.startswith("p_") for c in frame.columns):
            frame = frame.merge(means, on="bucket", how="left")
        name = f"emotion-history-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}-{bucket}" \
               f"{'' if camera_id is None else '-' + camera_id}.csv"
        return dcc.send_data_frame(frame.to_csv, name, index=False), None
