"""Live: each camera's latest classified frame with its faces, the rolling emotion distribution,
a per-track timeline and the newest events, refreshed every second.

Nothing is redrawn whole: frames are image swaps, the distribution is patched (bar heights only),
and the timeline grows through `extendData` with the events newer than the last one the browser has
(it is drawn whole once, with its first events: an empty date axis would show January 2000).

A camera whose capture has stopped (no heartbeat) is shown as stopped, with the time of its last
frame, never with that frame as if it were live.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from datetime import datetime, timezone

from dash import Input, Output, Patch, State, dcc, html, no_update

from services.dashboard import ui
from services.dashboard.charts import COLORS, distribution_figure, empty_figure, timeline_figure
from services.dashboard.context import DashboardContext, SourceUnavailable
from services.dashboard.live import camera_views, capturing_cameras, events_after, known_cameras, percentile
from shared.emotions import EMOTIONS

NAME = "live"
PATH = "/live"
TITLE = "Live"
REFRESH_MS = 1000
TIMELINE_POINTS = 600
ALL = "__all__"


def layout(ctx: DashboardContext, query: dict) -> html.Div:
    return html.Div([
        ui.page_header("Live", "Latest frame per camera with detected faces; updates every second.",
                       dcc.Dropdown(id="live-camera", options=[{"label": "All cameras", "value": ALL}], value=ALL,
                                    clearable=False, className="control-dropdown"),
                       dcc.RadioItems(id="live-window", options=[{"label": "last 10 s", "value": 10},
                                                                 {"label": "last 1 min", "value": 60}],
                                      value=10, inline=True, className="segmented")),
        html.Div(id="live-banner"),
        html.Div(id="live-kpis", className="kpi-row"),
        html.Div(id="live-cameras", className="camera-grid",
                 children=html.Div("Waiting for cameras…", className="card empty")),
        html.Div(className="grid-2", children=[
            ui.card("Emotion distribution", dcc.Graph(id="live-dist", figure=distribution_figure({}),
                                                       config={"displayModeBar": False})),
            ui.card("Per-track timeline (smoothed label)", dcc.Graph(id="live-timeline",
                                                                     figure=empty_figure("Waiting for events…"),
                                                                     config={"displayModeBar": False})),
        ]),
        ui.card("Recent events", html.Div(id="live-events")),
        dcc.Interval(id="live-tick", interval=REFRESH_MS),
        dcc.Store(id="live-last-id"),
    ])


def _camera_card(view, capturing: bool, now_ms: int) -> html.Div:
    if not capturing:
        last = view.frame.captured_ms if view.frame is not None else None
        ago = f" ({_ago(now_ms - last)} ago)" if last else ""
        body = html.Div(f"Capture stopped; last frame at {ui.fmt_ms(last)} UTC{ago}" if last else "Capture stopped",
                        className="frame-empty stopped")
        meta = state = "stopped"
    elif view.frame is None:
        body = html.Div("No frame in the live stream yet", className="frame-empty")
        meta = state = "starting"
    else:
        state = "live"
        src = "data:image/jpeg;base64," + base64.b64encode(view.frame.jpeg).decode()
        width, height = view.frame.width, view.frame.height
        boxes = []
        for event in view.boxes:
            box = event.bbox
            boxes.append(html.Div(className="face-box", style={
                "left": f"{100 * box.x / width:.2f}%", "top": f"{100 * box.y / height:.2f}%",
                "width": f"{100 * box.w / width:.2f}%", "height": f"{100 * box.h / height:.2f}%",
                "borderColor": COLORS[event.label]},
                children=html.Span(f"#{event.track_id} {event.label} {event.confidence:.0%}", className="face-tag",
                                   style={"backgroundColor": COLORS[event.label]})))
        body = html.Div([html.Img(src=src, className="frame", alt=f"camera {view.camera_id}"), *boxes],
                        className="frame-wrap")
        meta = f"frame {view.frame.frame_id} · {len(view.boxes)} face(s) · {view.age_ms} ms ago"
    return html.Div(className="card camera-card" + ("" if capturing else " camera-stopped"),
                    **{"data-camera": view.camera_id, "data-state": state}, children=[
        html.Div([html.Span(view.camera_id, className="camera-name"), html.Span(meta, className="camera-meta")],
                 className="camera-head"),
        body,
    ])


def _events_table(events) -> html.Div:
    rows = []
    for live in reversed(events[-12:]):
        e = live.event
        rows.append([ui.fmt_ms(e.times.captured_ms), e.camera_id, str(e.track_id), ui.chip(e.label),
                     f"{e.confidence:.0%}", f"{e.latency_ms} ms"])
    return ui.table(["captured (UTC)", "camera", "track", "label", "confidence", "latency"], rows,
                    class_name="events-table", empty="No events yet: start a camera with `emotion up`")


def _ago(ms: int) -> str:
    seconds = max(0, ms // 1000)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _timeline_points(events) -> tuple[list, list, list]:
    xs = [[] for _ in EMOTIONS]
    ys = [[] for _ in EMOTIONS]
    conf = [[] for _ in EMOTIONS]
    for live in events:
        e = live.event
        i = EMOTIONS.index(e.smoothed_label)
        xs[i].append(datetime.fromtimestamp(e.times.captured_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f"))
        ys[i].append(f"{e.camera_id} · track {e.track_id}")
        conf[i].append(round(max(e.smoothed), 3))
    return xs, ys, conf


def _timeline_update(events, drawn: bool):
    """(figure, extendData): the whole timeline with its first events, then only extensions."""
    if not events:
        return no_update, no_update
    xs, ys, conf = _timeline_points(events[-TIMELINE_POINTS:])
    if not drawn:
        figure = timeline_figure()
        for trace, x, y, c in zip(figure.data, xs, ys, conf):
            trace.x, trace.y, trace.customdata = x, y, c
        return figure, no_update
    return no_update, [{"x": xs, "y": ys, "customdata": conf}, list(range(len(EMOTIONS))), TIMELINE_POINTS]


def register(app, ctx: DashboardContext) -> None:
    @app.callback(Output("live-banner", "children"), Output("live-kpis", "children"),
                  Output("live-cameras", "children"), Output("live-dist", "figure"),
                  Output("live-timeline", "figure"), Output("live-timeline", "extendData"),
                  Output("live-last-id", "data"), Output("live-events", "children"), Output("live-camera", "options"),
                  Input("live-tick", "n_intervals"), Input("live-window", "value"), Input("live-camera", "value"),
                  State("live-last-id", "data"))
    def _refresh(_n, window_s, camera, last_id):
        try:
            events = ctx.redis_call(lambda _c: ctx.events.refresh())
            capturing = ctx.redis_call(lambda c: capturing_cameras(c, ctx.keys))
            cameras = ctx.redis_call(lambda c: known_cameras(c, ctx.keys, events))
            views = ctx.redis_call(lambda c: camera_views(c, ctx.keys, cameras, events))
        except SourceUnavailable as exc:
            # The timeline is dropped too (drawn again whole when Redis is back), not left frozen.
            return (ui.banner(f"{exc}; retrying"), no_update, no_update, no_update,
                    empty_figure("Redis is not answering"), no_update, None, no_update, no_update)
        now_ms = int(time.time() * 1000)
        # A stopped camera stays on the page while its last frame is still in the live stream.
        views = [v for v in views if v.camera_id in capturing or v.frame is not None]
        selected = [e for e in events if camera in (None, ALL) or e.event.camera_id == camera]
        recent = [e for e in selected if e.event.times.captured_ms >= now_ms - int(window_s or 10) * 1000]
        counts = Counter(e.event.label for e in recent)
        total = sum(counts.values())
        dist = Patch()
        dist["data"][0]["y"] = [counts.get(k, 0) / total if total else 0 for k in EMOTIONS]
        dist["layout"]["title"]["text"] = f"{total} face(s) in the last {window_s} s"

        new = events_after(events, last_id)
        figure, extension = _timeline_update(new, drawn=last_id is not None)
        newest_id = events[-1].stream_id if events else last_id
        last10 = [e for e in selected if e.event.times.captured_ms >= now_ms - 10_000]
        latencies = [e.event.latency_ms for e in last10]
        p50 = percentile(latencies, 50)
        kpis = [ui.kpi("cameras", f"{len(capturing)} of {len(views)}" if len(capturing) != len(views)
                       else str(len(views)), "capturing"),
                ui.kpi("faces / s", f"{len(last10) / 10:.1f}", "last 10 s"),
                ui.kpi("tracks", str(len({(e.event.camera_id, e.event.track_id) for e in last10})), "last 10 s"),
                ui.kpi("latency p50", f"{p50:.0f} ms" if p50 is not None else "–", "capture → event")]
        cards = ([_camera_card(v, v.camera_id in capturing, now_ms) for v in views]
                 or html.Div("No camera is capturing: start one with `emotion up`.", className="card empty"))
        banner = None
        if views and not capturing:
            banner = ui.banner("The pipeline is stopped: no capture is running. Start it with `emotion up`.",
                               "warning")
        options = [{"label": "All cameras", "value": ALL}] + [{"label": v.camera_id, "value": v.camera_id}
                                                              for v in views]
        return (banner, kpis, cards, dist, figure, extension, newest_id, _events_table(selected), options)
