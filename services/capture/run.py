"""Entry point of one camera: settings -> source -> Redis -> the capture loop, until the source ends,
`max_frames` are read, or SIGTERM/SIGINT."""

from __future__ import annotations

import json
import signal
import threading

from services.capture.capture import run_capture
from services.capture.sources import SourceError, open_source
from shared.bootstrap import redis_from
from shared.errors import StartupError
from shared.metrics import serve_metrics
from shared.session import new_session_id
from shared.settings import Settings
from shared.shards import claim_layout
from shared.streams import Keys


def check(settings: Settings) -> dict:
    capture = settings.capture
    if not capture.source or not capture.camera_id:
        raise StartupError("capture needs a source and a camera id: --source and --camera-id "
                           "(or EMOTION_CAPTURE__SOURCE and EMOTION_CAPTURE__CAMERA_ID)")
    return {"source": capture.source, "camera_id": capture.camera_id, "fps": capture.fps}


def run(settings: Settings, *, session_id: str | None = None, max_frames: int | None = None,
        print_json: bool = False) -> int:
    check(settings)
    capture = settings.capture
    try:  # before Redis: a source that cannot open is the first thing to report
        source = open_source(capture.source, fps=capture.fps, loop=capture.loop,
                             reconnect_max_s=capture.reconnect_max_s)
    except SourceError as exc:
        raise StartupError(str(exc)) from None
    client = redis_from(settings)
    claim_layout(client, Keys.of(settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with serve_metrics(settings, "capture") as metrics:
        stats = run_capture(client, Keys.of(settings), capture, source, camera_id=capture.camera_id,
                            session_id=session_id or new_session_id(), stop=stop, max_frames=max_frames,
                            heartbeat_ttl_s=settings.worker.heartbeat_ttl_s, metrics=metrics)
    if print_json:
        print(json.dumps(stats.__dict__))
    return 0
