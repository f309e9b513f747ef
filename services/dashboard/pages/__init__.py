"""One module per page; each has NAME, PATH, TITLE, `layout(ctx, query)` and `register(app, ctx)`."""

from services.dashboard.pages import analyze, health, history, live, sessions, training

PAGES = (live, history, sessions, analyze, training, health)
