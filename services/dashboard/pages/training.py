"""Training: enqueue a training job, follow RQ jobs live, and manage model versions (promote, rollback).

Jobs run on the RQ queue `<prefix>:training` (served by `emotion worker`); this page only enqueues and reads,
so it never imports TensorFlow. Progress comes from each job's meta (stage, epoch, epochs, metrics, eta_s).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from dash import Input, Output, State, ctx as dash_ctx, dcc, html, no_update
from pydantic import ValidationError

from services.dashboard import ui
from services.dashboard.context import DashboardContext, SourceUnavailable
from shared.registry import DEFAULT_VERSION
from shared.settings import describe_validation_error
from shared.training import MODEL_NAMES, DatasetPathError, TrainConfig, dataset_problem

log = logging.getLogger(__name__)

NAME = "training"
PATH = "/training"
TITLE = "Training"
REFRESH_MS = 2000
MAX_JOBS_PER_STATE = 10
DEFAULT_DATA = Path("../shared/data/fer2013")


def enqueue(ctx: DashboardContext, cfg: TrainConfig):
    """Enqueue through trainer.jobs (imported lazily; it imports no TensorFlow at import time)."""
    from trainer.jobs import enqueue_training

    return ctx.queue_call(lambda client: enqueue_training(client, cfg, ctx.settings))


def listening_workers(client, keys) -> int:
    from trainer.jobs import listening_workers as count

    return count(client, keys)


def workers_notice(workers: int, queued: int, queue: str):
    """Whether anyone will run the queued jobs: without a worker a job stays queued forever."""
    if workers:
        return html.P(f"{workers} worker(s) listening on queue '{queue}'.", id="train-workers",
                      className="summary")
    waiting = f"; {queued} queued job(s) wait for one" if queued else ""
    return html.Div(f"No worker is listening on queue '{queue}'{waiting}: start one with `emotion worker` "
                    "(or `docker compose up worker`).", id="train-workers", className="banner banner-warning",
                    role="status")


def list_jobs(client, keys) -> list[dict]:
    """Jobs of the training queue, newest first, with their state and progress meta."""
    from rq.job import Job

    from trainer.jobs import training_queue

    queue = training_queue(client, keys)
    by_state = {"queued": queue.get_job_ids()[:MAX_JOBS_PER_STATE],
                "started": queue.started_job_registry.get_job_ids()[:MAX_JOBS_PER_STATE],
                "finished": queue.finished_job_registry.get_job_ids()[-MAX_JOBS_PER_STATE:],
                "failed": queue.failed_job_registry.get_job_ids()[-MAX_JOBS_PER_STATE:]}
    rows = []
    for state, ids in by_state.items():
        for job in Job.fetch_many(ids, connection=client, serializer=queue.serializer):
            if job is None:
                continue
            meta = dict(job.meta or {})
            error = None
            if state == "failed":
                result = job.latest_result()
                error = (getattr(result, "exc_string", None) or "").strip().splitlines()[-1:] if result else None
            rows.append({"id": job.id, "state": state, "description": job.description or "", "meta": meta,
                         "enqueued_at": job.enqueued_at, "started_at": job.started_at, "ended_at": job.ended_at,
                         "error": error[0] if error else None})
    rows.sort(key=lambda r: r["enqueued_at"] or datetime.min.replace(tzinfo=timezone.utc), reverse=True)
    return rows


def _progress(meta: dict) -> html.Div:
    epoch, epochs = meta.get("epoch"), meta.get("epochs")
    fraction = (float(epoch) / float(epochs)) if epoch is not None and epochs else 0.0
    if meta.get("stage") == "done":
        fraction = 1.0
    label = f"epoch {epoch}/{epochs}" if epoch is not None and epochs else meta.get("stage", "")
    return html.Div(className="progress", title=label, children=[
        html.Div(className="progress-bar", style={"width": f"{100 * min(1.0, fraction):.0f}%"}),
        html.Span(label, className="progress-label")])


def _metrics_text(metrics) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return "–"
    parts = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {v:.3f}" for k, v in value.items() if isinstance(v, (int, float)) and
                              k in ("top1", "accuracy", "macro_f1", "top2"))
            if inner:
                parts.append(f"{key}: {inner}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key} {value:.3f}")
    return "; ".join(parts[:4]) or "–"


def _jobs_table(rows: list[dict], workers: int) -> html.Div:
    body = []
    for row in rows:
        meta = row["meta"]
        eta = meta.get("eta_s")
        when = row["enqueued_at"].strftime("%Y-%m-%d %H:%M:%S") if row["enqueued_at"] else "–"
        state = row["state"] + (" (no worker)" if row["state"] == "queued" and not workers else "")
        body.append([html.Code(row["id"][:12]), html.Span(state, className=f"state state-{row['state']}"),
                     row["description"], meta.get("stage", "–"), _progress(meta),
                     _metrics_text(meta.get("metrics") or (meta.get("result") or {}).get("metrics")),
                     f"{eta:.0f} s" if isinstance(eta, (int, float)) else "–", when, row["error"] or ""])
    return ui.table(["job", "state", "what", "stage", "progress", "metrics", "eta", "enqueued (UTC)", "error"],
                    body, class_name="jobs-table", empty="No training jobs yet")


def _versions(ctx: DashboardContext):
    """(name, metadata) of every version, newest first, the shipped default last; and the served name."""
    registry = ctx.registry()
    versions = [(meta.version, meta) for meta in reversed(registry.versions())]
    default = registry.default_model()
    if default is not None:
        versions.append((DEFAULT_VERSION, default))
    served = ctx.redis_call(lambda _c: registry.served_version())
    return versions, served


def _versions_table(versions, served) -> html.Div:
    rows = []
    for name, meta in versions:
        label = name if name != DEFAULT_VERSION else f"{name} (shipped: {meta.version})"
        rows.append([html.Strong(label) if name == served else label, meta.architecture, _metrics_text(meta.metrics),
                     html.Span("serving", className="state state-finished") if name == served else ""])
    return ui.table(["version", "architecture", "metrics", ""], rows, class_name="versions-table",
                    empty="No model at all: train one, or install the default model (EMOTION_DEFAULT_MODEL_DIR)")


def layout(ctx: DashboardContext, query: dict) -> html.Div:
    return html.Div([
        ui.page_header("Training", f"Train on the RQ queue '{ctx.keys.training_queue}' (run `emotion worker` to "
                                   "serve it) and manage model versions."),
        html.Div(id="train-banner"),
        html.Div(id="train-worker-state"),
        html.Div(className="grid-2", children=[
            ui.card("New training job", html.Div(className="form", children=[
                html.Label(["Dataset path", dcc.Input(id="train-data", type="text", value=str(DEFAULT_DATA),
                                                      className="input", debounce=False)]),
                html.Label(["Model", dcc.Dropdown(id="train-model", options=list(MODEL_NAMES), value="compact",
                                                  clearable=False)]),
                html.Label(["Epochs", dcc.Input(id="train-epochs", type="number", min=1, max=1000, value=60,
                                                className="input")]),
                html.Label(["Max images (optional, for a quick run)",
                            dcc.Input(id="train-max-images", type="number", min=7, className="input")]),
                html.Label(["Promote", dcc.Dropdown(id="train-promote", value="if-better", clearable=False,
                                                    options=["if-better", "always", "never"])]),
                html.Button("Enqueue training", id="train-submit", className="btn"),
                html.Div(id="train-message", className="form-message"),
            ])),
            ui.card("Model versions", html.Div(id="train-versions"), html.Div(className="form-row", children=[
                dcc.Dropdown(id="train-version", placeholder="version to promote", className="control-dropdown"),
                html.Button("Promote", id="train-promote-btn", className="btn"),
                html.Button("Rollback", id="train-rollback-btn", className="btn btn-secondary"),
            ]), html.Div(id="train-model-message", className="form-message")),
        ]),
        ui.card("Jobs", html.Div(id="train-jobs")),
        dcc.Interval(id="train-tick", interval=REFRESH_MS),
    ])


def register(app, ctx: DashboardContext) -> None:
    @app.callback(Output("train-message", "children"), Input("train-submit", "n_clicks"),
                  State("train-data", "value"), State("train-model", "value"), State("train-epochs", "value"),
                  State("train-max-images", "value"), State("train-promote", "value"), prevent_initial_call=True)
    def _submit(_clicks, data, model, epochs, max_images, promote):
        if not (data or "").strip():
            return html.Span("Not enqueued: enter the dataset path", className="error-text")
        problem = dataset_problem(Path(data.strip()))
        if problem:
            return html.Span(f"Not enqueued: {problem}", className="error-text")
        try:
            cfg = TrainConfig(data=Path(data.strip()), model=model, epochs=epochs or 60,
                              max_images=max_images or None, promote=promote)
        except ValidationError as exc:
            return html.Span(f"Not enqueued: {describe_validation_error(exc)}", className="error-text")
        try:
            job = enqueue(ctx, cfg)
        except (SourceUnavailable, DatasetPathError) as exc:
            return html.Span(f"Not enqueued: {exc}", className="error-text")
        except ImportError as exc:
            return html.Span(f"Not enqueued: the trainer is not installed ({exc})", className="error-text")
        log.info("event=training_enqueued job=%s model=%s epochs=%d", job.id, cfg.model, cfg.epochs)
        return html.Span(["Enqueued job ", html.Code(job.id, id="train-job-id")], className="ok-text")

    @app.callback(Output("train-jobs", "children"), Output("train-versions", "children"),
                  Output("train-version", "options"), Output("train-banner", "children"),
                  Output("train-worker-state", "children"),
                  Input("train-tick", "n_intervals"), Input("train-message", "children"),
                  Input("train-model-message", "children"))
    def _refresh(_n, _m1, _m2):
        try:
            try:
                jobs = ctx.queue_call(lambda client: list_jobs(client, ctx.keys))
                workers = ctx.queue_call(lambda client: listening_workers(client, ctx.keys))
                jobs_view = _jobs_table(jobs, workers)
                worker_state = workers_notice(workers, sum(1 for j in jobs if j["state"] == "queued"),
                                              ctx.keys.training_queue)
            except ImportError as exc:
                jobs_view = ui.banner(f"the trainer is not installed ({exc})", "warning")
                worker_state = None
            versions, served = _versions(ctx)
        except SourceUnavailable as exc:
            return no_update, no_update, no_update, ui.banner(f"{exc}; retrying"), no_update
        options = [{"label": name + (" (serving)" if name == served else ""), "value": name} for name, _ in versions]
        return jobs_view, _versions_table(versions, served), options, None, worker_state

    @app.callback(Output("train-model-message", "children"), Input("train-promote-btn", "n_clicks"),
                  Input("train-rollback-btn", "n_clicks"), State("train-version", "value"), prevent_initial_call=True)
    def _promote(_p, _r, version):
        from shared.model_runtime import ModelError

        registry = ctx.registry()
        try:
            if dash_ctx.triggered_id == "train-rollback-btn":
                restored = ctx.redis_call(lambda _c: registry.rollback())
                log.info("event=model_rollback version=%s", restored)
                return html.Span(f"Rolled back to {restored}", className="ok-text")
            if not version:
                return html.Span("Choose a version to promote", className="error-text")
            ctx.redis_call(lambda _c: registry.promote(version))
            log.info("event=model_promoted version=%s", version)
            return html.Span(f"Promoted {version}", className="ok-text")
        except (ModelError, SourceUnavailable) as exc:
            return html.Span(str(exc), className="error-text")
