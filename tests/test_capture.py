"""The capture service against a real Redis: what it publishes, the frames cap of the table of
streams, shedding when the detector falls behind, and its entry point."""

from __future__ import annotations

import json
import threading

import pytest

from emotion.cli import main
from services.capture.capture import run_capture
from services.capture.run import check, run
from services.capture.sources import open_source
from shared.errors import StartupError
from shared.schemas import FrameMessage, decode
from shared.settings import with_overrides
from shared.streams import DETECTOR_GROUP, StreamTable


def capture(client, keys, settings, frames: int, fps: float = 1000.0, **overrides):
    source = open_source("demo", fps=fps)
    capture_settings = settings.capture.model_copy(update={"fps": fps, **overrides})
    return run_capture(client, keys, capture_settings, source, camera_id="c1", session_id="s1",
                       stop=threading.Event(), max_frames=frames)


def test_frames_are_published_in_order_and_the_camera_registers(redis_client, keys, settings):
    stats = capture(redis_client, keys, settings, 12)
    assert (stats.frames_read, stats.published, stats.shed) == (12, 12, 0)
    frames = [decode(FrameMessage, fields) for _, fields in redis_client.xrange(keys.frames)]
    assert [f.frame_id for f in frames] == list(range(12)) and {f.session_id for f in frames} == {"s1"}
    assert int(redis_client.hget(keys.stats("capture"), "published")) == 12
    assert json.loads(redis_client.hget(keys.cameras, "c1"))["session_id"] == "s1"


def test_the_frames_stream_is_capped_by_the_table(redis_client, keys, settings):
    cap = StreamTable(keys).frames.retention.cap
    capture(redis_client, keys, settings, cap + 150, jpeg_quality=20, max_width=160)
    assert cap <= redis_client.xlen(keys.frames) <= cap + 100  # MAXLEN ~: within one stream node


def test_new_frames_are_shed_while_the_detector_is_behind(redis_client, keys, settings):
    redis_client.xgroup_create(keys.frames, DETECTOR_GROUP, id="$", mkstream=True)  # nobody reads
    stats = capture(redis_client, keys, settings, 40, fps=25.0, shed_lag=10)
    # The lag is read every 0.2 s (5 frames at 25 fps), so at most that many more get through.
    assert 10 <= stats.published <= 15 and stats.published + stats.shed == 40
    assert int(redis_client.hget(keys.stats("capture"), "shed")) == stats.shed


def test_entry_point_needs_a_source_and_reports_one_that_does_not_open(settings, capsys):
    with pytest.raises(StartupError, match="--source and --camera-id"):
        check(settings)
    missing = with_overrides(settings, {"capture.source": "/nonexistent/video.mp4", "capture.camera_id": "c1"})
    with pytest.raises(StartupError, match="/nonexistent/video.mp4"):
        run(missing)  # before it ever connects to Redis


def test_cli_flags_become_settings(monkeypatch, capsys):
    monkeypatch.setenv("EMOTION_CAPTURE__FPS", "5")
    assert main(["capture", "--source", "demo", "--camera-id", "c9", "--loop", "--check-config"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "command": "capture", "source": "demo",
                                                   "camera_id": "c9", "fps": 5.0}
    assert main(["capture", "--source", "demo", "--camera-id", "c9", "--fps", "-2", "--check-config"]) == 2
    assert "capture.fps" in capsys.readouterr().err
