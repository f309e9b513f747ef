"""Small layout helpers shared by the pages (cards, banners, KPI tiles, tables)."""

from __future__ import annotations

from datetime import datetime, timezone

from dash import html

from services.dashboard.charts import COLORS


def page_header(title: str, subtitle: str, *controls) -> html.Div:
    return html.Div(className="page-header", children=[
        html.Div([html.H1(title), html.P(subtitle, className="subtitle")]),
        html.Div(list(controls), className="controls"),
    ])


def card(title: str | None, *children, class_name: str = "", **kwargs) -> html.Div:
    body = ([html.H3(title, className="card-title")] if title else []) + list(children)
    return html.Div(body, className=f"card {class_name}".strip(), **kwargs)


def banner(message: str | None, kind: str = "error"):
    if not message:
        return None
    return html.Div(message, className=f"banner banner-{kind}", role="alert")


def kpi(label: str, value, hint: str | None = None) -> html.Div:
    return html.Div(className="kpi", children=[html.Div(label, className="kpi-label"),
                                               html.Div(value, className="kpi-value"),
                                               html.Div(hint or "", className="kpi-hint")])


def chip(label: str) -> html.Span:
    return html.Span(label, className="chip", style={"backgroundColor": COLORS.get(label, "#cbd2d9")})


def table(headers: list[str], rows: list[list], class_name: str = "", empty: str = "Nothing yet") -> html.Div:
    head = html.Thead(html.Tr([html.Th(h) for h in headers]))
    if not rows:
        body = html.Tbody(html.Tr(html.Td(empty, colSpan=len(headers), className="empty-row")))
    else:
        body = html.Tbody([html.Tr([html.Td(cell) for cell in row]) for row in rows])
    return html.Div(html.Table([head, body], className=f"table {class_name}".strip()), className="table-wrap")


def fmt_ms(epoch_ms: int | float | None) -> str:
    if not epoch_ms:
        return "–"
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%H:%M:%S.%f")[:-3]
