"""Figures shared by several pages; one colour per emotion everywhere."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from shared.emotions import EMOTION_COLORS, EMOTIONS

COLORS = EMOTION_COLORS
PROB_COLUMNS = [f"p_{e}" for e in EMOTIONS]


def base_layout(**extra) -> dict:
    """Title top left, legend in a column on the right: a horizontal legend above the plot collided
    with the title as soon as it wrapped (seven emotions on a half-width chart)."""
    title = extra.pop("title", None)  # "" still reserves the space: the live page fills the title in later
    layout = dict(margin=dict(l=48, r=16, t=44 if title is not None else 16, b=40), paper_bgcolor="rgba(0,0,0,0)",
                  plot_bgcolor="#ffffff",
                  font=dict(family="Inter, system-ui, -apple-system, Segoe UI, sans-serif", size=12, color="#1f2933"),
                  title=dict(text=title or "", x=0, xref="paper", xanchor="left", y=1, yref="container", yanchor="top",
                             pad=dict(t=10), font=dict(size=14)),
                  legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top", tracegroupgap=2),
                  hovermode="closest")
    layout.update(extra)
    return layout


def empty_figure(message: str, height: int = 320) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(**base_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False)))
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#7b8794"), x=0.5, y=0.5,
                       xref="paper", yref="paper")
    return fig


def distribution_figure(counts: dict[str, int], title: str = "") -> go.Figure:
    total = sum(counts.values()) or 1
    fig = go.Figure(go.Bar(x=list(EMOTIONS), y=[counts.get(e, 0) / total for e in EMOTIONS],
                           marker_color=[COLORS[e] for e in EMOTIONS], hovertemplate="%{x}: %{y:.0%}<extra></extra>"))
    fig.update_layout(**base_layout(height=280, title=title, yaxis=dict(tickformat=".0%", range=[0, 1],
                                                                         gridcolor="#eef1f4")))
    return fig


def stacked_counts_figure(counts: pd.DataFrame, title: str = "Faces per bucket") -> go.Figure:
    """`counts`: bucket, label, count (as returned by the store's emotion_counts)."""
    if counts is None or counts.empty:
        return empty_figure("No events in this range")
    fig = go.Figure()
    for emotion in EMOTIONS:
        part = counts[counts["label"] == emotion]
        if part.empty:
            continue
        fig.add_bar(x=part["bucket"], y=part["count"], name=emotion, marker_color=COLORS[emotion])
    fig.update_layout(**base_layout(height=340, title=title, barmode="stack", yaxis=dict(gridcolor="#eef1f4")))
    return fig


def shares_figure(shares: pd.DataFrame, title: str = "Share of faces") -> go.Figure:
    """`shares`: label, count, share."""
    if shares is None or shares.empty or float(shares["count"].sum()) == 0:
        return empty_figure("No events in this range")
    order = [e for e in EMOTIONS if e in set(shares["label"])]
    frame = shares.set_index("label").loc[order].reset_index()
    fig = go.Figure(go.Pie(labels=frame["label"], values=frame["count"], hole=0.45, sort=False,
                           marker=dict(colors=[COLORS[e] for e in frame["label"]]),
                           hovertemplate="%{label}: %{value} (%{percent})<extra></extra>"))
    fig.update_layout(**base_layout(height=340, title=title))
    return fig


def probabilities_figure(means: pd.DataFrame, title: str = "Mean probability") -> go.Figure:
    """`means`: bucket and p_<emotion> columns."""
    if means is None or means.empty:
        return empty_figure("No events in this range")
    fig = go.Figure()
    for emotion, column in zip(EMOTIONS, PROB_COLUMNS):
        if column in means:
            fig.add_scatter(x=means["bucket"], y=means[column], name=emotion, mode="lines+markers",
                            line=dict(color=COLORS[emotion], width=2), marker=dict(size=4))
    # One bucket alone would get a date axis zoomed to milliseconds around it.
    xaxis = dict(type="category") if means["bucket"].nunique() == 1 else {}
    fig.update_layout(**base_layout(height=340, title=title, xaxis=xaxis,
                                    yaxis=dict(range=[0, 1], tickformat=".0%", gridcolor="#eef1f4")))
    return fig


def timeline_figure() -> go.Figure:
    """Per-track timeline: one row per track, one trace per emotion (points are appended with extendData)."""
    fig = go.Figure()
    for emotion in EMOTIONS:
        fig.add_scatter(x=[], y=[], customdata=[], name=emotion, mode="markers",
                        marker=dict(color=COLORS[emotion], size=9, symbol="square"),
                        hovertemplate="%{y}<br>%{x}<br>" + emotion + " %{customdata:.0%}<extra></extra>")
    fig.update_layout(**base_layout(height=320, uirevision="timeline", xaxis=dict(type="date", gridcolor="#eef1f4"),
                                    yaxis=dict(type="category", gridcolor="#eef1f4", automargin=True)))
    return fig
