"""The parts of `emotion analyze` in-process: that it runs the live pipeline's own code (and gets the
same answers as running that code frame by frame), its inputs, its workers' failure modes, and its
bounded report data."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from analysis.inputs import Frame, ImageSetInput, InputError, VideoInput, expand
from analysis.pipeline import FrameResult
from analysis.progress import Progress
from analysis.report import MAX_BUCKETS, MAX_TRACKS, ReportData, write_report
from analysis.run import AnalyzeRequest, analyze
from analysis.workers import DetectWorkers, InputEnd, WorkerError
from shared.emotions import EMOTIONS
from shared.faces import IoUTracker, make_detector
from shared.frame_faces import frame_faces
from shared.model_runtime import EmotionModel
from shared.schemas import BBox, EmotionEvent, StageTimes
from shared.settings import Settings
from shared.smoothing import build_events
from tests.analysis_media import write_photos, write_video

FPS = 15.0


@pytest.fixture
def offline_settings(model_dir, tmp_path) -> Settings:
    return Settings(default_model_dir=model_dir, registry_dir=tmp_path / "registry",
                    accurate_model_dir=tmp_path / "none", database_url=f"sqlite:///{tmp_path / 'e.sqlite'}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_rows_equal_the_live_services_code_run_frame_by_frame(workers, offline_settings, tmp_path):
    """The analysis (detection split over worker processes, tracking and batched inference here) gives
    exactly what the detector service's step (`frame_faces`) and the classifier's model call and
    smoothing (`predict_tta`, `build_events`) give when run on each frame in order."""
    video = tmp_path / "clip.mp4"
    write_video(video, frames=20, fps=FPS)
    settings = offline_settings.model_copy(update={"analyze": offline_settings.analyze.model_copy(
        update={"workers": workers, "tta": "flip"})})
    out = tmp_path / "rows.jsonl"
    summary = analyze(settings, AnalyzeRequest(paths=[str(video)], out=out, session_id="s-test"), progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]

    model = EmotionModel(settings.default_model_dir)
    detector = make_detector(settings.detector)
    tracker = IoUTracker(settings.detector.iou_threshold, settings.detector.track_max_age_ms)
    capture = cv2.VideoCapture(str(video))
    expected, states, index = [], {}, 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        captured = 1_000_000 + round(index * 1000 / FPS)
        faces = frame_faces(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), detector, settings.detector, model.preprocess,
                            tracker, camera_id="clip.mp4", session_id="s-test", frame_id=index,
                            captured_ms=captured, detected_ms=captured).faces
        if faces:
            probabilities = model.predict_tta(np.stack([f.crop_array() for f in faces]), "flip")
            events, updated = build_events(faces, probabilities, model.version, states,
                                           settings.classifier.smoothing_tau_ms, captured)
            states.update(updated)
            expected += [(index, e) for e in events]
        index += 1
    assert summary.faces == len(rows) == len(expected) > 0
    for row, (frame, event) in zip(rows, expected):
        assert row["frame"] == frame and row["track_id"] == event.track_id
        assert (row["x"], row["y"], row["w"], row["h"]) == (event.bbox.x, event.bbox.y, event.bbox.w, event.bbox.h)
        assert [row[f"p_{e}"] for e in EMOTIONS] == pytest.approx(event.probabilities, abs=2e-6)
        assert (row["label"], row["smoothed_label"], row["top2"]) == (event.label, event.smoothed_label,
                                                                       "|".join(event.top2))


def test_paths_expand_to_videos_and_image_sets_with_unique_cameras(tmp_path):
    write_photos(tmp_path / "photos")
    write_video(tmp_path / "photos" / "clip.mp4", frames=3, fps=FPS)
    write_video(tmp_path / "clip.mp4", frames=4, fps=FPS)
    inputs = expand([str(tmp_path / "photos"), str(tmp_path / "clip.mp4"), str(tmp_path / "photos" / "b-one.png"),
                     str(tmp_path / "photos" / "*.jpg")])
    kinds = [(i.kind, i.camera_id, i.expected_frames) for i in inputs]
    assert kinds == [("video", "clip.mp4", 3), ("images", "photos", 4), ("video", "clip.mp4-2", 4),
                     ("images", "b-one.png", 1), ("images", "photos-2", 3)]
    assert isinstance(inputs[0], VideoInput) and inputs[0].fps == pytest.approx(FPS)
    for bad, message in ((tmp_path / "nope", "no such file"), (tmp_path / "*.gif", "matches no image")):
        with pytest.raises(InputError, match=message):
            expand([str(bad)])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="cannot open it as a video"):
        expand([str(tmp_path / "notes.txt")])


def test_frames_decode_only_what_is_asked_for(tmp_path):
    write_video(tmp_path / "clip.mp4", frames=10, fps=FPS)
    video = expand([str(tmp_path / "clip.mp4")])[0]
    frames = list(video.frames(every=3, select=lambda ordinal: ordinal % 2 == 0))
    assert [f.index for f in frames] == list(range(10))
    assert [f.ordinal for f in frames] == [0, None, None, 1, None, None, 2, None, None, 3]
    assert [f.index for f in frames if f.image is not None] == [0, 6]  # ordinals 0 and 2
    assert all(f.image is not None for f in video.frames(every=3, decode_skipped=True))
    photos = ImageSetInput("p", [tmp_path / "x.jpg"], "p")
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    (broken,) = photos.frames()
    assert broken.image is None and broken.analyse


def _spread_results(count: int, seconds: float, tracks: int):
    """FrameResults of one long video: `count` frames over `seconds`, each with one face of a rotating track."""
    item = VideoInput(Path("long.mp4"), "long", FPS, count, 64, 64)
    for index in range(count):
        probabilities = [0.0] * 7
        probabilities[index % 7] = 1.0
        at = int(index * seconds * 1000 / count)
        event = EmotionEvent(event_id=f"e{index}", camera_id="long", session_id="s", frame_id=index, face_index=0,
                             track_id=index % tracks, bbox=BBox(x=1, y=1, w=8, h=8), label=EMOTIONS[index % 7],
                             confidence=1.0, probabilities=probabilities, top2=(EMOTIONS[index % 7], EMOTIONS[0]),
                             smoothed=probabilities, smoothed_label=EMOTIONS[index % 7], model_version="v",
                             times=StageTimes(captured_ms=at + 1, detected_ms=at + 1, classified_ms=at + 1))
        yield FrameResult(item, Frame(index, at, "long.mp4", None, index), [event])


def test_report_data_stays_bounded_over_a_long_video(tmp_path):
    data = ReportData()
    for result in _spread_results(20_000, seconds=2 * 3600, tracks=100):
        data.add(result)
    assert len(data.sums) <= MAX_BUCKETS and data.width >= 2 * 3600 / MAX_BUCKETS
    assert all(len(t.buckets) <= MAX_BUCKETS for t in data.tracks.values())
    assert len(data.shown_tracks()) == MAX_TRACKS
    assert int(data.counts.sum()) == 20_000 and sum(int(s[7]) for s in data.sums.values()) == 20_000
    times, means = data.means()
    assert means.shape == (len(data.sums), 7) and np.allclose(means.sum(axis=1), 1.0)
    paths = write_report(data, str(tmp_path / "long."), "t", {"inputs": "long.mp4"})
    assert all(Path(p).stat().st_size > 1000 for p in paths.values())


def test_progress_line_and_silence_when_not_a_terminal(tmp_path):
    import io

    bar = Progress(200, enabled=True)
    bar._started -= 2.0  # as if two seconds had passed
    line = bar.line(100, 37)
    assert line.startswith("[############------------] 100/200 frames") and "frames/s" in line
    assert "37 faces" in line and "ETA 0:02" in line
    quiet = io.StringIO()  # not a terminal
    Progress(10, quiet).update(5, 1)
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_a_worker_that_dies_is_an_error_not_a_hang(offline_settings, tmp_path):
    video = tmp_path / "long.mp4"
    write_video(video, frames=400, fps=FPS)
    inputs = expand([str(video)])
    model = EmotionModel(offline_settings.default_model_dir)
    workers = DetectWorkers(inputs, 2, offline_settings.detector, model.preprocess, every=1)
    try:
        workers.wait_ready()
        results = workers.results(0)
        assert next(results).ordinal == 0
        os.kill(workers._processes[1].pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WorkerError, match="detection worker 1 exited"):
            for item in results:
                assert not isinstance(item, InputEnd)
        assert time.monotonic() - started < 30
    finally:
        workers.close()
    assert not any(p.is_alive() for p in workers._processes)


def _die_in_the_middle_of_a_message(writer) -> None:
    import struct

    os.write(writer.fileno(), struct.pack("!i", 5000) + b"\0" * 100)  # a message's header, a fiftieth of its body
    os._exit(9)


@pytest.mark.timeout(60)
def test_a_worker_killed_in_the_middle_of_a_message_is_an_error_not_a_hang():
    """The race behind a CI hang: a worker killed while writing left the main process waiting for the
    rest of the message (a queue's writer stays open in the main process). Made deterministic here."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_die_in_the_middle_of_a_message, args=(writer,))
    process.start()
    writer.close()  # as DetectWorkers does once its workers run
    workers = DetectWorkers.__new__(DetectWorkers)  # its reading side only, fed by the process above
    workers._readers, workers._processes = [reader], [process]
    with pytest.raises(WorkerError, match="detection worker 0 exited \\(code 9\\)"):
        workers._get(0)

