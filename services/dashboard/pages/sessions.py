"""Sessions: the end-of-session report for any recorded session, at /sessions?session=<id>.

`emotion start` opens this URL when the user stops it with Ctrl+C.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from services.dashboard import ui
from services.dashboard.charts import (COLORS, base_layout, empty_figure, probabilities_figure, shares_figure,
                                       stacked_counts_figure)
from services.dashboard.context import DashboardContext, SourceUnavailable
from services.dashboard.pages.history import as_frame
from shared.emotions import EMOTIONS
from shared.store.queries import SessionReport

NAME = "sessions"
PATH = "/sessions"
TITLE = "Sessions"


def report_frames(report: SessionReport) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(counts over time, shares, mean probabilities over time): the three charts of the original report."""
    counts = report.counts_over_time if not report.counts_over_time.empty else report.counts
    return counts, report.shares, report.mean_probabilities


def counts_figure(counts: pd.DataFrame) -> go.Figure:
    if counts.empty or "count" not in counts:
        return empty_figure("No faces were recorded in this session")
    if "bucket" in counts:
        return stacked_counts_figure(counts, "Faces over the session")
    totals = counts.groupby("label")["count"].sum()
    fig = go.Figure(go.Bar(x=list(EMOTIONS), y=[int(totals.get(e, 0)) for e in EMOTIONS],
                           marker_color=[COLORS[e] for e in EMOTIONS]))
    fig.update_layout(**base_layout(height=340, title="Faces per emotion"))
    return fig


def session_options(ctx: DashboardContext) -> tuple[list[dict], str | None, str | None]:
    """(dropdown options, the session to open by default, error). The default is the newest session
    with recorded faces: a run that failed at once (no events) is listed, but not opened."""
    try:
        sessions = as_frame(ctx.query("list_sessions", limit=200))
    except SourceUnavailable as exc:
        return [], None, str(exc)
    if sessions.empty:
        return [], None, None
    options, default = [], None
    for _, row in sessions.iterrows():
        count = int(row["event_count"]) if pd.notna(row.get("event_count")) else 0
        # `emotion up` names every camera of its run in `source` (cam0=demo, cam1=clip.mp4); camera_id
        # is only the first camera an event came from.
        cameras = row.get("source") if pd.notna(row.get("source")) and row.get("source") else row.get("camera_id")
        started = row.get("started")
        details = [str(cameras) if pd.notna(cameras) else None,
                   f"{started:%Y-%m-%d %H:%M} UTC" if pd.notna(started) else None, f"{count:,} faces"]
        options.append({"label": " · ".join([str(row["session_id"]), *(d for d in details if d)]),
                        "value": str(row["session_id"])})
        if default is None and count > 0:
            default = str(row["session_id"])
    return options, default or options[0]["value"], None


def layout(ctx: DashboardContext, query: dict) -> html.Div:
    options, default, error = session_options(ctx)
    selected = query.get("session") or default
    if selected and selected not in {o["value"] for o in options}:
        options = [{"label": selected, "value": selected}] + options
    return html.Div([
        ui.page_header("Session report", "Counts, shares and mean probabilities of one recorded session.",
                       dcc.Dropdown(id="session-select", options=options, value=selected, clearable=False,
                                    placeholder="No recorded sessions yet", className="control-dropdown wide")),
        html.Div(ui.banner(error), id="session-banner"),
        html.Div(id="session-report"),
    ])


def register(app, ctx: DashboardContext) -> None:
    @app.callback(Output("session-report", "children"), Output("session-banner", "children", allow_duplicate=True),
                  Input("session-select", "value"), prevent_initial_call="initial_duplicate")
    def _report(session_id):
        if not session_id:
            return html.Div(className="card empty", children=[
                html.H3("No session selected"),
                html.P("Sessions appear here once the recorder has stored events (run `emotion start 0` or "
                       "`emotion up`).")]), None
        try:
            report = ctx.query("session_report", session_id)
        except SourceUnavailable as exc:
            return None, ui.banner(str(exc))
        counts, shares, means = report_frames(report)
        total = int(counts["count"].sum()) if "count" in counts else 0
        link = dcc.Link(f"/sessions?session={session_id}", href=f"/sessions?session={session_id}")
        if total == 0 and shares.empty and means.empty:
            return html.Div(className="card empty", children=[
                html.H3(f"Session {session_id} has no recorded faces"),
                html.P("Either no face was detected, or the recorder has not stored this session's events yet."),
                html.P(["Permalink: ", link])]), None
        per_camera = ", ".join(f"{camera} {count:,}" for camera, count in report.cameras.items())
        cameras = f" from {len(report.cameras)} camera(s) ({per_camera})" if report.cameras else ""
        return html.Div([
            html.P([f"Session {session_id}: {total:,} faces{cameras}. Permalink: ", link], className="summary",
                   id="session-summary"),
            ui.card(None, dcc.Graph(id="session-counts", figure=counts_figure(counts),
                                    config={"displaylogo": False, "displayModeBar": "hover"})),
            html.Div(className="grid-2", children=[
                ui.card(None, dcc.Graph(id="session-shares", figure=shares_figure(shares, "Share of faces"),
                                        config={"displaylogo": False, "displayModeBar": "hover"})),
                ui.card(None, dcc.Graph(id="session-probs", figure=probabilities_figure(means, "Mean probability"),
                                        config={"displaylogo": False, "displayModeBar": "hover"})),
            ]),
        ]), None
