"""One function per API resource: validated query in, response model out.

They read through the same `DashboardContext` calls as the pages (`ctx.query` runs a
`shared.store.queries` function with a time limit, `ctx.redis_call` turns a Redis outage into
`SourceUnavailable`), so the API and the History, Sessions and Health pages can never disagree.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pandas as pd

from services.dashboard.api.models import (Aggregates, AggregatesQuery, Camera, CameraList, CameraLive, Event,
                                           EventsPage, EventsQuery, GroupState, Health, Heartbeat, LabelCounts,
                                           LabelShares, LatencySummary, ModelsReport, ModelVersion, Probabilities,
                                           RoleState, Session, SessionList, SessionReport, SessionsQuery,
                                           StageHealth, TimelineBucket, encode_cursor, optional_time)
from services.dashboard.context import DashboardContext
from services.dashboard.live import STAGES, latency_summary, pipeline_snapshot
from shared.bootstrap import registry_from
from shared.emotions import EMOTIONS
from shared.model_runtime import ModelError, read_metadata
from shared.registry import ROLES
from shared.store.schema import PROB_COLUMNS


def events(ctx: DashboardContext, query: EventsQuery) -> EventsPage:
    # One row more than the page says whether another page follows, without a COUNT.
    frame = ctx.query("events_page", query.start, query.end, camera_id=query.camera, session_id=query.session,
                      label=query.label, after=query.after, limit=query.limit + 1)
    rows = frame.to_dict("records")
    page = rows[:query.limit]
    cursor = encode_cursor(optional_time(page[-1]["time"]), page[-1]["id"]) if len(rows) > query.limit else None
    return EventsPage(events=[Event.from_row(row) for row in page], next_cursor=cursor, limit=query.limit)


def sessions(ctx: DashboardContext, query: SessionsQuery) -> SessionList:
    frame = ctx.query("list_sessions", limit=query.limit)
    return SessionList(sessions=[_session(row) for row in frame.to_dict("records")])


def session_report(ctx: DashboardContext, _query, session_id: str) -> SessionReport | None:
    """The report of one session; None when the store knows neither the session nor any of its events."""
    report = ctx.query("session_report", session_id)
    if report.session is None and report.total == 0:
        return None
    counts = {row["label"]: int(row["count"]) for row in report.counts.to_dict("records")}
    shares = {row["label"]: float(row["share"]) for row in report.shares.to_dict("records")}
    return SessionReport(session_id=session_id, session=_session(report.session) if report.session else None,
                         total=report.total, bucket=report.bucket, counts=_label_counts(counts),
                         shares=LabelShares(**{e: shares.get(e, 0.0) for e in EMOTIONS}),
                         timeline=timeline(report.counts_over_time, report.mean_probabilities))


def aggregates(ctx: DashboardContext, query: AggregatesQuery) -> Aggregates:
    frame = ctx.query("emotion_counts", query.start, query.end, query.bucket, camera_id=query.camera)
    totals = frame.groupby("label")["count"].sum().to_dict() if len(frame) else {}
    return Aggregates(start=query.start, end=query.end, bucket=query.bucket, camera=query.camera,
                      total=int(sum(totals.values())), counts=_label_counts(totals),
                      timeline=timeline(frame[["bucket", "label", "count"]], bucket_means(frame)))


def cameras(ctx: DashboardContext, _query=None) -> CameraList:
    stored = {row["camera_id"]: row for row in ctx.query("list_cameras").to_dict("records")}
    live_raw = ctx.redis_call(lambda client: client.hgetall(ctx.keys.cameras))
    live: dict[str, CameraLive | None] = {}
    for name, raw in live_raw.items():
        try:
            live[name.decode()] = CameraLive.model_validate(json.loads(raw))
        except ValueError:  # a capture of another version wrote something else: show the camera, not its state
            live[name.decode()] = None
    out = []
    for camera_id in sorted(set(stored) | set(live)):
        row = stored.get(camera_id, {})
        out.append(Camera(camera_id=camera_id, source=_text(row.get("source")),
                          first_seen=optional_time(row.get("first_seen")), last_seen=optional_time(row.get("last_seen")),
                          last_session_id=_text(row.get("last_session_id")), event_count=int(row.get("event_count") or 0),
                          live=live.get(camera_id)))
    return CameraList(cameras=out)


def models(ctx: DashboardContext, _query=None) -> ModelsReport:
    roles = [ctx.redis_call(lambda _c, role=role: _role_state(registry_from(ctx.settings, ctx.redis, role)))
             for role in ROLES]
    current = {state.role: state.current for state in roles}
    versions = [ModelVersion(version=meta.version, architecture=meta.architecture,
                             created=_text(getattr(meta, "created", None)), params=_int(getattr(meta, "params", None)),
                             sha256=meta.sha256, metrics=meta.metrics,
                             current_for=[r for r in ROLES if current[r] == meta.version])
                for meta in registry_from(ctx.settings, None).versions()]
    return ModelsReport(roles=roles, versions=versions)


def _role_state(registry) -> RoleState:
    current = registry.current_version()
    try:
        serving = read_metadata(registry.current_dir()).version
    except ModelError as exc:
        return RoleState(role=registry.role, current=current, serving=None, source=None, error=str(exc))
    return RoleState(role=registry.role, current=current, serving=serving, source="registry" if current else "default",
                     error=None)


def health(ctx: DashboardContext, _query=None) -> Health:
    snapshot = ctx.redis_call(lambda client: pipeline_snapshot(client, ctx.keys))
    recent = ctx.redis_call(lambda _c: ctx.events.refresh())
    now_ms = int(time.time() * 1000)
    beats = []
    for beat in snapshot["heartbeats"]:
        try:
            beats.append(Heartbeat.model_validate(beat))
        except ValueError:  # not one of ours: it cannot count as a replica either
            continue
    replicas: dict[str, int] = {}
    for beat in beats:
        replicas[str(beat.service)] = replicas.get(str(beat.service), 0) + 1
    stages = []
    for service, stream_name, _group in STAGES:
        group = snapshot["groups"].get(service)
        stages.append(StageHealth(
            service=service, replicas=replicas.get(service, 0),
            input_stream=getattr(ctx.keys, stream_name) if stream_name else None,
            length=snapshot["lengths"][stream_name] if stream_name else None,
            dead_letters=snapshot["dead"][stream_name] if stream_name else None,
            group=GroupState(**group) if group else None, counters=snapshot["stats"].get(service, {})))
    latency = latency_summary(recent, now_ms)
    return Health(time=datetime.fromtimestamp(snapshot["ts_ms"] / 1000, timezone.utc), stages=stages, heartbeats=beats,
                  latency=LatencySummary(events=latency.events, p50_ms=latency.p50_ms, p95_ms=latency.p95_ms,
                                         window_ms=latency.window_ms),
                  shed_frames=int(snapshot["stats"].get("capture", {}).get("shed", 0)),
                  dead_letters=int(sum(snapshot["dead"].values())))


# --- shaping store frames -----------------------------------------------------------------------

def bucket_means(counts: pd.DataFrame) -> pd.DataFrame:
    """Per bucket, the mean probabilities over all its events, from emotion_counts' per-label means
    (weighted by each label's count): the same numbers as queries.mean_probabilities, from one query."""
    if counts.empty:
        return pd.DataFrame(columns=["bucket", *PROB_COLUMNS])
    weighted = counts[["bucket", "count"]].copy()
    for p in PROB_COLUMNS:
        weighted[p] = counts[p] * counts["count"]
    sums = weighted.groupby("bucket", as_index=False, sort=True).sum()
    for p in PROB_COLUMNS:
        sums[p] = sums[p] / sums["count"]
    return sums.drop(columns="count")


def timeline(counts: pd.DataFrame, means: pd.DataFrame) -> list[TimelineBucket]:
    """Buckets oldest first from (bucket, label, count) rows and (bucket, p_<emotion>) means."""
    per_bucket: dict[pd.Timestamp, dict[str, int]] = {}
    for row in counts.to_dict("records"):
        per_bucket.setdefault(row["bucket"], {})[row["label"]] = int(row["count"])
    mean_rows = {row["bucket"]: row for row in means.to_dict("records")}
    out = []
    for bucket in sorted(per_bucket):
        by_label = per_bucket[bucket]
        mean = mean_rows[bucket]  # both frames come from the same sums: a missing bucket is a bug, not data
        out.append(TimelineBucket(bucket=optional_time(bucket), total=sum(by_label.values()),
                                  counts=_label_counts(by_label),
                                  mean_probabilities=Probabilities(**{e: float(mean[f"p_{e}"]) for e in EMOTIONS})))
    return out


def _label_counts(counts: dict) -> LabelCounts:
    return LabelCounts(**{e: int(counts.get(e, 0)) for e in EMOTIONS})


def _session(row: dict) -> Session:
    return Session(session_id=row["session_id"], camera_id=_text(row.get("camera_id")), source=_text(row.get("source")),
                   started=optional_time(row.get("started")), ended=optional_time(row.get("ended")),
                   last_event=optional_time(row.get("last_event")), event_count=int(row.get("event_count") or 0))


def _text(value) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _int(value) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
