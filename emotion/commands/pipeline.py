"""Pipeline subcommands: capture, detector, classifier, up, start."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from datetime import datetime, timezone

from emotion.arguments import at_least_one, port, positive_seconds
from emotion.errors import UserError


def _settings(**overrides):
    from shared.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def new_session_id() -> str:
    return datetime.now(timezone.utc).strftime("s%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]


def _check_config(args, settings) -> bool:
    if getattr(args, "check_config", False):
        print(json.dumps({"ok": True, "command": args.command}))
        return True
    return False


def cmd_capture(args) -> int:
    import signal

    from services.capture.capture import run_capture
    from services.capture.sources import SourceError, open_source
    from shared.bootstrap import configure_logging, redis_from
    from shared.streams import Keys

    settings = _settings()
    if args.fps is not None:
        settings.capture = type(settings.capture).model_validate({**settings.capture.model_dump(), "fps": args.fps})
    if _check_config(args, settings):
        return 0
    configure_logging(settings)
    try:
        source = open_source(args.source, fps=settings.capture.fps, loop=args.loop,
                             reconnect_max_s=settings.capture.reconnect_max_s)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    client = redis_from(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stats = run_capture(client, Keys(settings.prefix), settings.capture, source, camera_id=args.camera_id,
                        session_id=args.session or new_session_id(), frames_maxlen=settings.frames_maxlen,
                        stop=stop, max_frames=args.max_frames, heartbeat_ttl_s=settings.worker.heartbeat_ttl_s)
    if args.json:
        print(json.dumps(stats.__dict__))
    return 0


def _service_command(run_module: str):
    def command(args) -> int:
        import importlib

        from shared.bootstrap import configure_logging

        settings = _settings()
        if getattr(args, "threads", None) is not None:
            settings.classifier = type(settings.classifier).model_validate(
                {**settings.classifier.model_dump(), "threads": args.threads})
        if _check_config(args, settings):
            return 0
        configure_logging(settings)
        return importlib.import_module(run_module).run(settings)

    return command


def cmd_up(args) -> int:
    from emotion.up import UpOptions, exit_code, run_up

    settings = _settings()
    options = UpOptions(sources=args.source or ["demo"], classifiers=args.classifiers, duration_s=args.duration,
                        dashboard=not args.no_dashboard, worker=args.worker, recorder=not args.no_recorder,
                        dashboard_port=args.port, open_report=False)
    summary = run_up(settings, options)
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))
    return exit_code(summary)


def cmd_start(args) -> int:
    """The original verb: one webcam, and the session report opened in a browser on Ctrl+C."""
    from emotion.up import UpOptions, exit_code, run_up

    settings = _settings()
    options = UpOptions(sources=[args.device], classifiers=1, duration_s=args.duration, dashboard=True,
                        worker=False, recorder=True, dashboard_port=args.port, open_report=not args.no_browser)
    summary = run_up(settings, options)
    print(json.dumps(summary, indent=2))
    return exit_code(summary)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="publish frames of one camera/source to the frames stream")
    p.add_argument("--source", required=True, help="webcam index (0), video file, rtsp/http URL, image folder or glob, "
                                                   "'demo', or 'demo:PATH.npz' (FER-2013 faces)")
    p.add_argument("--camera-id", required=True, help="name of this camera (letters, digits, _.:-)")
    p.add_argument("--fps", type=float, default=None, help="frames per second to publish (default 15)")
    p.add_argument("--loop", action="store_true", help="restart file sources at their end")
    p.add_argument("--session", default=None, help="session id (default: a new one)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--json", action="store_true", help="print capture statistics as JSON at the end")
    p.add_argument("--check-config", action="store_true", help="validate settings and exit")
    p.set_defaults(func=cmd_capture)

    for name, module, text in (("detector", "services.detector.run", "find and crop faces (consumer group detector)"),
                               ("classifier", "services.classifier.run", "classify faces (consumer group classifier)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--check-config", action="store_true", help="validate settings and exit")
        if name == "classifier":
            p.add_argument("--threads", type=int, default=None, help="inference threads")
        p.set_defaults(func=_service_command(module))

    duration_help = "stop after this many seconds of running (counted once every process is up; default: until Ctrl+C)"
    p = sub.add_parser("up", help="run the whole pipeline as local processes")
    p.add_argument("--source", action="append", help="a source per camera (repeatable; default: demo)")
    p.add_argument("--classifiers", type=at_least_one, default=1, help="classifier replicas (default 1)")
    p.add_argument("--duration", type=positive_seconds, default=None, help=duration_help)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.add_argument("--no-recorder", action="store_true", help="do not start the recorder (nothing is stored)")
    p.add_argument("--worker", action="store_true", help="also run the RQ training worker")
    p.add_argument("--port", type=port, default=None, help="dashboard port (default 8050)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("start", help="webcam session (the original verb); Ctrl+C shows the session report")
    p.add_argument("device", help="webcam index or any source accepted by capture --source")
    p.add_argument("--duration", type=positive_seconds, default=None, help=duration_help)
    p.add_argument("--port", type=port, default=None, help="dashboard port (default 8050)")
    p.add_argument("--no-browser", action="store_true", help="on Ctrl+C, stop everything without opening the "
                                                             "session report in a browser")
    p.set_defaults(func=cmd_start)
