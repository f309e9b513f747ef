"""The entry point of `emotion analyze`: an `AnalyzeRequest` in, an `AnalyzeSummary` out.

Everything a user can get wrong (a missing PATH, an output folder that does not exist, an unknown
--out suffix, an output that would overwrite an input, a store that does not answer) is checked before
the first frame is read, and raised as `AnalyzeError` with one line that says what to fix.

The detection workers are started with multiprocessing's `spawn`, which imports the calling script
again: a script that calls `analyze` must do so under `if __name__ == "__main__":` (the `emotion`
command does).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from analysis.annotate import Annotator
from analysis.background import BackgroundSink
from analysis.inputs import Input, InputError, expand
from analysis.pipeline import Pipeline, PipelineConfig, Totals, expected_analysed, input_span_ms
from analysis.progress import Progress
from analysis.workers import DetectWorkers
from analysis.report import ReportData, warm_up, write_report
from analysis.rows import RowWriter, output_format
from shared.bootstrap import answering_role, registry_from
from shared.model_runtime import EmotionModel, TtaMode
from shared.settings import Settings

log = logging.getLogger(__name__)


class AnalyzeError(ValueError):
    """Something the user can fix; the message is one line."""


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(min_length=1, description="video files, images, folders or globs")
    out: Path | None = Field(None, description="rows file: .csv, .jsonl or .parquet")
    annotate: Path | None = Field(None, description="annotated video file, or folder")
    every: int = Field(1, ge=1, description="analyse every Nth frame of each video")
    model_role: Literal["fast", "accurate"] | None = Field(None, description="None: settings.analyze.model_role")
    store: bool = Field(False, description="record the results as a session of the event store")
    session_id: str = Field(min_length=1, max_length=64)


class ModelUsed(BaseModel):
    version: str
    role: Literal["fast", "accurate"] = Field(description="the role whose model answered")
    requested_role: Literal["fast", "accurate"]
    tta: TtaMode = Field(description="the test-time augmentation that ran")
    directory: str


class Outputs(BaseModel):
    rows: str | None = None
    annotated: str | None = Field(None, description="the annotated video, or the folder of annotated files")
    annotated_files: int = 0
    report: dict[str, str] = Field(default_factory=dict, description="html, over_time, shares, timeline")


class AnalyzeSummary(BaseModel):
    """What `--json` prints (one line)."""

    frames: int = Field(description="frames analysed (with --every N, every Nth frame of each video)")
    faces: int
    seconds: float = Field(description="wall time of the analysis, from the first frame read to the last output "
                                       "written (model and detector loading are startup_s)")
    frames_per_s: float
    labels: dict[str, int] = Field(description="faces per label, FER order")
    outputs: Outputs
    model: ModelUsed
    detector: str
    frames_read: int
    frames_without_faces: int
    faces_over_limit: int
    inputs: int
    unreadable: list[str] = Field(description="images that did not decode (the first 20)")
    unreadable_count: int
    rows: int | None = Field(None, description="rows written to --out")
    session_id: str | None = Field(None, description="the stored session (--store)")
    events_stored: int | None = None
    startup_s: float


def _check_outputs(request: AnalyzeRequest) -> None:
    for flag, path in (("--out", request.out), ("--annotate", request.annotate)):
        if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
            raise AnalyzeError(f"{flag} {path}: the folder {Path(path).parent} does not exist")
    if request.out is not None:
        try:
            output_format(request.out)
        except ValueError as exc:
            raise AnalyzeError(str(exc)) from None
        if request.out.is_dir():
            raise AnalyzeError(f"--out {request.out} is a folder; give a file name ending in .csv, .jsonl or .parquet")


def _check_not_inputs(request: AnalyzeRequest, inputs: list[Input]) -> None:
    read = {Path(p).resolve() for item in inputs for p in ([item.path] if item.kind == "video" else item.paths)}
    for flag, path in (("--out", request.out), ("--annotate", request.annotate)):
        if path is not None and Path(path).expanduser().resolve() in read:
            raise AnalyzeError(f"{flag} {path} is one of the inputs: it would be overwritten while it is read")


def load_model(settings: Settings, requested: Literal["fast", "accurate"]) -> tuple[EmotionModel, ModelUsed]:
    """The current model of the requested role (no Redis: the registry's own files say which), with
    who answered: the accurate role falls back to the fast default while no accurate model is installed."""
    directory = registry_from(settings, None, requested).current_dir()
    # One thread: the detection workers keep the cores busy (see analysis.workers).
    model = EmotionModel(directory, threads=1)
    return model, ModelUsed(version=model.version, role=answering_role(settings, directory, requested),
                            requested_role=requested, tta=model.effective_tta(settings.analyze.tta),
                            directory=str(directory))


def _clock_base(inputs: list[Input], config: PipelineConfig, started_ms: int) -> int:
    """The run's clock starts so that the longest input ends when the analysis started: stored events
    keep their video's timing and none lies in the future (a live view of "the last hour" stays true)."""
    return started_ms - max(input_span_ms(item, config) for item in inputs) - 1000


def analyze(settings: Settings, request: AnalyzeRequest, progress_stream: TextIO | None = None,
            progress: bool | None = None) -> AnalyzeSummary:
    started = time.perf_counter()
    _check_outputs(request)
    try:
        inputs = expand(request.paths)
    except InputError as exc:
        raise AnalyzeError(str(exc)) from None
    _check_not_inputs(request, inputs)
    model, used = load_model(settings, request.model_role or settings.analyze.model_role)
    config = PipelineConfig(detector_settings=settings.detector, model=model, tta=used.tta,
                            tau_ms=settings.classifier.smoothing_tau_ms, session_id=request.session_id, base_ms=0,
                            every=request.every, keep_images=request.annotate is not None)
    config.base_ms = _clock_base(inputs, config, int(time.time() * 1000))
    analysed = sum(expected_analysed(item, request.every) for item in inputs)
    count = min(settings.analyze.workers or os.cpu_count() or 1, max(1, analysed))
    sinks = _open_sinks(settings, request, inputs, config)
    report_ready = None
    if "report" in sinks:
        report_ready = threading.Thread(target=warm_up, name="analyze-report-warm-up", daemon=True)
        report_ready.start()
    try:
        workers = DetectWorkers(inputs, count, settings.detector, model.preprocess, request.every)
    except BaseException:
        _close_all(sinks)
        raise
    try:
        try:
            detector = workers.wait_ready()
        except BaseException:
            _close_all(sinks)
            raise
        bar = Progress(analysed, progress_stream, progress)
        startup_s = time.perf_counter() - started
        started = time.perf_counter()
        # The annotated video is drawn and encoded on its own thread, beside classification (analysis.background).
        running = [BackgroundSink(sink, name="analyze-annotate-write") if name == "annotate" else sink
                   for name, sink in sinks.items()]
        pipeline = Pipeline(config, running, lambda totals: bar.update(totals.frames, totals.faces))
        try:
            totals = pipeline.run(inputs, workers)
        finally:
            bar.finish(pipeline.totals.frames, pipeline.totals.faces)
    finally:
        workers.close()
    rows, annotator, report, store = (sinks.get(k) for k in ("rows", "annotate", "report", "store"))
    outputs = Outputs(rows=str(request.out) if request.out else None)
    if report_ready is not None:
        report_ready.join()
    if annotator is not None:
        outputs.annotated = str(annotator.target)
        outputs.annotated_files = len(annotator.paths)
        outputs.report = write_report(report, annotator.report_prefix, "Emotion analysis",
                                      _facts(request, totals, used, inputs))
    seconds = time.perf_counter() - started
    return AnalyzeSummary(
        frames=totals.frames, faces=totals.faces, seconds=round(seconds, 3),
        frames_per_s=round(totals.frames / seconds, 2) if seconds > 0 else 0.0, labels=totals.labels,
        outputs=outputs, model=used, detector=detector, frames_read=totals.frames_read,
        frames_without_faces=totals.frames_without_faces, faces_over_limit=totals.faces_over_limit,
        inputs=len(inputs), unreadable=totals.unreadable, unreadable_count=totals.unreadable_count,
        rows=rows.rows if rows else None, session_id=request.session_id if store else None,
        events_stored=store.recorded if store else None, startup_s=round(startup_s, 3))


def _open_sinks(settings: Settings, request: AnalyzeRequest, inputs: list[Input], config: PipelineConfig) -> dict:
    """The sinks the request asks for, by name; any that opened are closed again if a later one fails."""
    sinks: dict = {}
    try:
        if request.out is not None:
            sinks["rows"] = RowWriter(request.out)
        if request.annotate is not None:
            try:
                sinks["annotate"] = Annotator(request.annotate, inputs)
            except ValueError as exc:
                raise AnalyzeError(str(exc)) from None
            sinks["report"] = ReportData()
        if request.store:
            sinks["store"] = _open_store(settings, request.session_id, inputs, config)
    except BaseException:
        _close_all(sinks)
        raise
    return sinks


def _close_all(sinks: dict) -> None:
    for sink in sinks.values():
        sink.close()


def _open_store(settings: Settings, session_id: str, inputs: list[Input], config: PipelineConfig):
    import sqlalchemy as sa

    from analysis.store import StoreRecorder
    from shared.store import describe_db_error, redact_url

    started = datetime.fromtimestamp(config.base_ms / 1000, timezone.utc)
    ended = datetime.fromtimestamp((config.base_ms + max(input_span_ms(i, config) for i in inputs)) / 1000,
                                   timezone.utc)
    cameras = {item.camera_id: str(item.path if item.kind == "video" else item.name) for item in inputs}
    try:
        return StoreRecorder(settings.database_url, session_id, cameras, started, ended)
    except sa.exc.SQLAlchemyError as exc:
        raise AnalyzeError(f"--store: event store {redact_url(settings.database_url)}: {describe_db_error(exc)}") from None


def _facts(request: AnalyzeRequest, totals: Totals, used: ModelUsed, inputs: list[Input]) -> dict[str, str]:
    names = [str(item.path) if item.kind == "video" else f"{item.name} ({item.expected_frames} images)"
             for item in inputs]
    return {"inputs": ", ".join(names)[:400], "frames analysed": f"{totals.frames:,}" +
            (f" (1 frame in {request.every})" if request.every > 1 else ""), "faces": f"{totals.faces:,}",
            "model": f"{used.version} ({used.role} role, TTA {used.tta})"}
