"""Pipeline health: per-stage rates, stream lengths, consumer-group lag and pending, live replicas
(from heartbeats), shed frames, dead letters and capture→event latency percentiles.

Rates are differences of the stats counters between two refreshes; the previous snapshot and the
last RATE_POINTS rates are kept in the browser (dcc.Store), so the server holds no per-viewer state,
and the throughput chart is drawn from them: never an empty date axis (which shows January 2000).
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timezone

from dash import Input, Output, State, dcc, html, no_update
import plotly.graph_objects as go

from services.dashboard import ui
from services.dashboard.charts import base_layout, empty_figure
from services.dashboard.context import DashboardContext, SourceUnavailable
from services.dashboard.live import STAGES, latency_summary, pipeline_snapshot

NAME = "health"
PATH = "/health"
TITLE = "Pipeline health"
REFRESH_MS = 2000
RATE_POINTS = 150  # five minutes of refreshes
RATE_SERIES = (("frames captured / s", "capture", "published"), ("frames detected / s", "detector", "entries_in"),
               ("faces classified / s", "classifier", "entries_in"), ("events recorded / s", "recorder", "entries_in"))


def rates(current: dict, previous: dict | None) -> dict[str, dict[str, float]]:
    """Per service and counter: increase per second since the previous snapshot (0 on the first)."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    if not previous:
        return out
    seconds = max(0.001, (current["ts_ms"] - previous["ts_ms"]) / 1000)
    for service, counters in current["stats"].items():
        before = previous.get("stats", {}).get(service, {})
        for name, value in counters.items():
            out[service][name] = max(0.0, (value - before.get(name, value)) / seconds)
    return out


def rates_figure(points: list[dict]) -> go.Figure:
    """`points`: [{"t": "YYYY-mm-dd HH:MM:SS", "y": [one rate per RATE_SERIES]}], oldest first."""
    if not points:
        return empty_figure("Waiting for a second reading…", height=280)
    fig = go.Figure()
    for index, (label, _service, _counter) in enumerate(RATE_SERIES):
        fig.add_scatter(x=[p["t"] for p in points], y=[p["y"][index] for p in points], name=label,
                        mode="lines+markers", marker=dict(size=4))
    fig.update_layout(**base_layout(height=280, uirevision="rates", xaxis=dict(type="date", gridcolor="#eef1f4"),
                                    yaxis=dict(rangemode="tozero", gridcolor="#eef1f4", title="per second")))
    return fig


def layout(ctx: DashboardContext, query: dict) -> html.Div:
    return html.Div([
        ui.page_header("Pipeline health", "Rates, backlogs, replicas and latency; refreshed every 2 s."),
        html.Div(id="health-banner"),
        html.Div(id="health-kpis", className="kpi-row"),
        ui.card("Stages", html.Div(id="health-stages")),
        html.Div(className="grid-2", children=[
            ui.card("Throughput", dcc.Graph(id="health-rates", figure=rates_figure([]),
                                            config={"displayModeBar": False})),
            ui.card("Live replicas (heartbeats)", html.Div(id="health-replicas")),
        ]),
        dcc.Interval(id="health-tick", interval=REFRESH_MS),
        dcc.Store(id="health-prev"),
    ])


def _stage_rows(snapshot: dict, per_s: dict, replicas: dict[str, int]) -> list[list]:
    rows = []
    input_stream = {"capture": None, "detector": "frames", "classifier": "faces", "recorder": "events"}
    for service, stream, _group in STAGES:
        stats = snapshot["stats"].get(service, {})
        group = snapshot["groups"].get(service, {})
        counter_in = "published" if service == "capture" else "entries_in"
        stream_name = input_stream[service]
        rows.append([
            html.Strong(service), str(replicas.get(service, 0)),
            f"{per_s.get(service, {}).get(counter_in, 0.0):.1f}",
            f"{per_s.get(service, {}).get('entries_out', 0.0):.1f}" if service != "capture" else "–",
            f"{snapshot['lengths'][stream_name]:,}" if stream_name else "–",
            "–" if not group else ("?" if group.get("lag") is None else f"{group['lag']:,}"),
            f"{group['pending']:,}" if group else "–",
            f"{stats.get('shed', 0):,}" if service == "capture" else f"{stats.get('dead', 0):,}",
            f"{snapshot['dead'][stream_name]:,}" if stream_name else "–",
        ])
    return rows


def _replica_rows(beats: list[dict], now_ms: int) -> list[list]:
    rows = []
    for beat in sorted(beats, key=lambda b: (str(b.get("service")), str(b.get("consumer")))):
        started = beat.get("started_ms") or now_ms
        uptime = max(1.0, (now_ms - started) / 1000)
        busy = float(beat.get("busy_s", 0.0)) / uptime
        rows.append([str(beat.get("service", "?")), html.Code(str(beat.get("consumer", "?"))[-28:]),
                     f"{int(beat.get('entries', 0)):,}", f"{int(beat.get('dead', 0)):,}", f"{busy:.0%}",
                     f"{(now_ms - int(beat.get('ts_ms', now_ms))) / 1000:.1f} s"])
    return rows


def register(app, ctx: DashboardContext) -> None:
    @app.callback(Output("health-banner", "children"), Output("health-kpis", "children"),
                  Output("health-stages", "children"), Output("health-replicas", "children"),
                  Output("health-rates", "figure"), Output("health-prev", "data"),
                  Input("health-tick", "n_intervals"), State("health-prev", "data"))
    def _refresh(_n, previous):
        try:
            snapshot = ctx.redis_call(lambda c: pipeline_snapshot(c, ctx.keys))
            events = ctx.redis_call(lambda _c: ctx.events.refresh())
        except SourceUnavailable as exc:
            return (ui.banner(f"{exc}; retrying"), no_update, no_update, no_update,
                    empty_figure("Redis is not answering", height=280), no_update)
        now_ms = int(time.time() * 1000)
        per_s = rates(snapshot, previous)
        replicas: dict[str, int] = defaultdict(int)
        for beat in snapshot["heartbeats"]:
            replicas[str(beat.get("service"))] += 1
        latency = latency_summary(events, now_ms)
        p50, p95 = latency.p50_ms, latency.p95_ms
        dead_total = sum(snapshot["dead"].values())
        shed = snapshot["stats"].get("capture", {}).get("shed", 0)
        kpis = [ui.kpi("latency p50", f"{p50:.0f} ms" if p50 is not None else "–", f"capture → event, {latency.events} events"),
                ui.kpi("latency p95", f"{p95:.0f} ms" if p95 is not None else "–", "last minute"),
                ui.kpi("events / s", f"{per_s.get('classifier', {}).get('entries_out', 0.0):.1f}", "classifier output"),
                ui.kpi("shed frames", f"{shed:,}", "dropped by capture under load"),
                ui.kpi("dead letters", f"{dead_total:,}", "all :dead streams")]
        stages = ui.table(["stage", "replicas", "in / s", "out / s", "input stream", "group lag", "pending",
                           "shed / dead", "dead letters"], _stage_rows(snapshot, per_s, replicas),
                          class_name="stages-table")
        replica_table = ui.table(["service", "consumer", "entries", "dead", "busy", "last beat"],
                                 _replica_rows(snapshot["heartbeats"], now_ms), empty="No live replicas")
        points = list((previous or {}).get("points", []))
        if previous:
            stamp = datetime.fromtimestamp(now_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            points = (points + [{"t": stamp, "y": [round(per_s.get(service, {}).get(counter, 0.0), 2)
                                                   for _l, service, counter in RATE_SERIES]}])[-RATE_POINTS:]
        keep = {"ts_ms": snapshot["ts_ms"], "stats": snapshot["stats"], "points": points}
        return None, kpis, stages, replica_table, rates_figure(points), keep
