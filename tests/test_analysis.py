"""`emotion analyze` end to end, as a user runs it: real processes, a video and photos made here,
the shipped model, and the real event store. What is checked is what the user gets: one row per face
the detector found, where the faces were pasted; an annotated video with every frame; the report; the
--json summary; a stored session the dashboard's queries return; one-line errors; no worker left behind.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import pandas as pd
import psutil
import pytest

from shared.emotions import EMOTIONS
from tests.analysis_media import count_frames, write_photos, write_video
from tests.proc_utils import REPO_ROOT, clean_env

pytestmark = pytest.mark.slow
FPS = 15.0
SUMMARY_FIELDS = {"frames", "faces", "seconds", "frames_per_s", "labels", "outputs", "model", "detector", "frames_read",
                  "frames_without_faces", "faces_over_limit", "inputs", "unreadable", "unreadable_count", "rows",
                  "session_id", "events_stored", "startup_s"}


@pytest.fixture
def env(tmp_path, model_dir) -> dict[str, str]:
    return clean_env(EMOTION_DEFAULT_MODEL_DIR=str(model_dir), EMOTION_REGISTRY_DIR=str(tmp_path / "registry"),
                     EMOTION_ACCURATE_MODEL_DIR=str(tmp_path / "no-accurate-model"), EMOTION_LOG_LEVEL="WARNING",
                     EMOTION_DATABASE_URL=f"sqlite:///{tmp_path / 'events.sqlite'}")


def analyze(env: dict, *args: str, expect: int = 0, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "emotion", "analyze", *map(str, args)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json prints exactly one line on stdout, got {lines!r}"
    summary = json.loads(lines[0])
    assert set(summary) == SUMMARY_FIELDS
    return summary


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list]:
    path = tmp_path_factory.mktemp("clip") / "two-faces.mp4"
    return path, write_video(path, frames=30, fps=FPS)


def test_video_rows_are_the_faces_where_they_were_pasted_with_an_annotated_copy_and_report(clip, env, tmp_path):
    video, truth = clip
    rows_path, annotated = tmp_path / "rows.csv", tmp_path / "out" / "annotated.mp4"
    annotated.parent.mkdir()
    summary = summary_of(analyze(env, video, "--out", rows_path, "--annotate", annotated, "--json"))

    with open(rows_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["frames"] == summary["frames_read"] == len(truth) == 30
    assert summary["rows"] == len(rows) == summary["faces"]
    assert sum(summary["labels"].values()) == summary["faces"] and list(summary["labels"]) == list(EMOTIONS)
    assert Counter(r["label"] for r in rows) == {k: v for k, v in summary["labels"].items() if v}
    if summary["detector"] == "yunet":  # the Haar fallback (platforms without the wheel) misses and adds some
        assert summary["faces"] == sum(map(len, truth)) == 60 and summary["frames_without_faces"] == 0
    for row in rows:
        frame = int(row["frame"])
        assert float(row["time_s"]) == pytest.approx(frame / FPS, abs=1e-3)
        box = {k: int(row[k]) for k in ("x", "y", "w", "h")}
        assert any(face.contains_centre_of(box) for face in truth[frame]), (frame, box)
        assert sum(float(row[f"p_{e}"]) for e in EMOTIONS) == pytest.approx(1.0, abs=1e-4)
        assert row["top2"].split("|")[0] == row["label"] and row["smoothed_label"] in EMOTIONS
        assert row["source"] == str(video)
    # One track per pasted face: the left face keeps one id, the right face another, across all 30 frames.
    by_track = {track: [r for r in rows if r["track_id"] == track] for track in {r["track_id"] for r in rows}}
    if summary["detector"] == "yunet":
        assert len(by_track) == 2 and all(len(members) == 30 for members in by_track.values())

    assert count_frames(annotated) == count_frames(video) == 30  # decodes, every frame
    first = cv2.VideoCapture(str(annotated)).read()[1]
    assert first.shape == (480, 640, 3)

    outputs = summary["outputs"]
    assert outputs["rows"] == str(rows_path) and outputs["annotated"] == str(annotated)
    assert outputs["annotated_files"] == 1
    report = {k: Path(v) for k, v in outputs["report"].items()}
    assert report == {"html": tmp_path / "out" / "annotated.report.html",
                      "over_time": tmp_path / "out" / "annotated.emotions-over-time.png",
                      "shares": tmp_path / "out" / "annotated.emotion-shares.png",
                      "timeline": tmp_path / "out" / "annotated.track-timeline.png"}
    page = report["html"].read_text()
    assert page.count('class="plotly-graph-div"') == 3 and "Per-track timeline" in page
    for kind in ("over_time", "shares", "timeline"):
        image = cv2.imread(str(report[kind]))
        assert image is not None and image.shape[1] >= 700 and image.std() > 10  # drawn, not blank

    model = summary["model"]
    assert model["requested_role"] == "accurate" and model["role"] == "fast"  # no accurate model installed here
    assert model["version"] and model["tta"] == "none"  # the default: TTA is opt-in
    assert summary["frames_per_s"] > 0 and summary["seconds"] > 0


def test_every_n_analyses_a_part_and_still_annotates_every_frame(clip, env, tmp_path):
    video, truth = clip
    summary = summary_of(analyze(env, video, "--every", "4", "--annotate", tmp_path / "a.avi",
                                 "--out", tmp_path / "rows.jsonl", "--json"))
    assert summary["frames"] == 8 and summary["frames_read"] == 30  # frames 0, 4, ..., 28
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == summary["faces"] and {r["frame"] for r in rows} <= set(range(0, 30, 4))
    assert count_frames(tmp_path / "a.avi") == 30


def test_a_folder_of_photos_one_row_per_face_and_broken_files_reported(env, tmp_path):
    expected = write_photos(tmp_path / "photos")
    rows_path = tmp_path / "rows.parquet"
    summary = summary_of(analyze(env, tmp_path / "photos", "--out", rows_path, "--annotate", tmp_path / "marked",
                                 "--json"))
    rows = pd.read_parquet(rows_path)
    assert summary["unreadable"] == [str(tmp_path / "photos" / "d-broken.jpg")] and summary["unreadable_count"] == 1
    assert summary["frames"] == 3 and summary["faces"] == len(rows)
    found = Counter(Path(source).name for source in rows["source"])
    if summary["detector"] == "yunet":
        assert found == {name: n for name, n in expected.items() if n}
    assert rows["time_s"].isna().all()  # photos have no position in a video
    assert rows["track_id"].is_unique  # no track joins two faces, nor two photos
    marked = sorted(p.name for p in (tmp_path / "marked").iterdir())
    assert marked == ["a-two.annotated.jpg", "b-one.annotated.png", "c-none.annotated.jpg", "emotion-shares.png",
                      "emotions-over-time.png", "report.html", "track-timeline.png"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_store_records_a_session_the_dashboard_queries_return(backend, clip, env, tmp_path):
    from shared.store import make_engine, queries
    from tests.test_store_support import create_pg_database

    video, _ = clip
    drop = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'analysis.sqlite'}"
    else:
        name, drop = create_pg_database("analyze")
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        before = datetime.now(timezone.utc)
        summary = summary_of(analyze(env, video, "--store", "--database-url", url, "--json"))
        engine = make_engine(url)
        try:
            session_id = summary["session_id"]
            assert session_id and summary["events_stored"] == summary["faces"] > 0
            sessions = queries.list_sessions(engine)
            row = sessions.set_index("session_id").loc[session_id]
            assert int(row["event_count"]) == summary["faces"]
            assert row["source"] == f"analyze: two-faces.mp4={video}"
            assert row["ended"] - row["started"] == pd.Timedelta(seconds=2)  # 30 frames at 15 fps
            assert row["ended"] <= pd.Timestamp(before) + pd.Timedelta(seconds=5)  # no event in the future
            report = queries.session_report(engine, session_id)
            assert report.total == summary["faces"] and report.cameras == {"two-faces.mp4": summary["faces"]}
            counts = dict(zip(report.counts["label"], report.counts["count"]))
            assert counts == summary["labels"]
            events = queries.events_frame(engine, before - timedelta(hours=1), before + timedelta(hours=1))
            events = events[events["session_id"] == session_id]
            assert len(events) == summary["faces"] and events["event_id"].is_unique
            span = (events["time"].max() - events["time"].min()).total_seconds()
            assert span == pytest.approx(29 / FPS, abs=0.01)  # the video's own timing
            assert (events["total_ms"] == 0).all()  # an analysis has no capture latency to report
        finally:
            engine.dispose()
    finally:
        if drop:
            drop()


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such file or folder"),
    (["{video}", "--out", "{tmp}/rows.txt"], "must end in .csv, .jsonl, .parquet"),
    (["{video}", "--out", "{tmp}/nowhere/rows.csv"], "does not exist"),
    (["{tmp}/photos", "--annotate", "{tmp}/photos.mp4"], "a video file holds the annotated copy of one video"),
    (["{tmp}/empty"], "holds no image"),
    (["{video}", "--every", "0"], "must be at least 1"),
    (["{video}", "--annotate", "{video}"], "is one of the inputs"),
    (["{video}", "--store", "--database-url", "postgresql+psycopg://postgres@127.0.0.1:1/none"], "--store: event store"),
])
def test_user_mistakes_are_one_line_and_exit_2(args, message, clip, env, tmp_path):
    video, _ = clip
    write_photos(tmp_path / "photos")
    (tmp_path / "empty").mkdir()
    values = {"missing": tmp_path / "nope.mp4", "video": video, "tmp": tmp_path}
    proc = analyze(env, *(a.format(**values) for a in args), "--json", expect=2)
    assert message in proc.stderr and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "rows.csv").exists()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_progress_bar_on_a_terminal_and_none_when_piped(clip, env, tmp_path):
    import pty

    video, _ = clip
    piped = analyze(env, video)
    assert "\r" not in piped.stderr and "frames/s" not in piped.stderr
    assert json.loads(piped.stdout)["faces"] > 0  # without --json: the same summary, indented
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "emotion", "analyze", str(video), "--json"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    out, _ = proc.communicate(timeout=120)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(leader)
    assert proc.returncode == 0
    text = terminal.decode(errors="replace")
    assert "30/30 frames" in text and "frames/s" in text and "ETA" in text
    assert summary_of(subprocess.CompletedProcess([], 0, out, ""))["frames"] == 30


def test_ctrl_c_stops_the_run_and_leaves_no_worker(env, tmp_path):
    long_video = tmp_path / "long.mp4"
    # Long enough that the run cannot end between the rows' first buffered write and the signal, even on
    # a fast machine (600 frames once finished in that gap on a loaded one).
    write_video(long_video, frames=1800, fps=FPS)
    rows = tmp_path / "rows.csv"
    proc = subprocess.Popen([sys.executable, "-m", "emotion", "analyze", str(long_video), "--out", str(rows), "--json"],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (rows.exists() and rows.stat().st_size > 300):
        workers = _children(proc.pid) or workers
        time.sleep(0.05)
    workers = _children(proc.pid) or workers
    assert workers, "the analysis runs its detection in worker processes"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr[-2000:]
    psutil.wait_procs(workers, timeout=10)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    header = rows.read_text().splitlines()[0]
    assert header.startswith("source,frame,time_s,")  # what was analysed before the stop is in the file


def test_kill_9_of_the_analysis_takes_its_workers_down(env, tmp_path):
    long_video = tmp_path / "long.mp4"
    write_video(long_video, frames=600, fps=FPS)
    proc = subprocess.Popen([sys.executable, "-m", "emotion", "analyze", str(long_video), "--json"], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and len(workers) < 1:
        workers = [c for c in _children(proc.pid) if "multiprocessing" in " ".join(c.cmdline())]
        time.sleep(0.05)
    assert workers
    time.sleep(0.5)
    proc.kill()
    proc.wait(10)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
