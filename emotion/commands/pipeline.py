"""Pipeline subcommands: up (every service as a local process) and start (the original webcam verb).

The services themselves (capture, detector, classifier, recorder, dashboard) are in services.py.
"""

from __future__ import annotations

import argparse
import json

from emotion.arguments import at_least_one, port, positive_seconds


def _settings():
    from shared.settings import Settings

    return Settings()


def cmd_up(args) -> int:
    from emotion.up import UpOptions, exit_code, run_up

    settings = _settings()
    options = UpOptions(sources=args.source or ["demo"], classifiers=args.classifiers, detectors=args.detectors,
                        duration_s=args.duration,
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
    duration_help = "stop after this many seconds of running (counted once every process is up; default: until Ctrl+C)"
    p = sub.add_parser("up", help="run the whole pipeline as local processes")
    p.add_argument("--source", action="append", help="a source per camera (repeatable; default: demo)")
    p.add_argument("--classifiers", type=at_least_one, default=1, help="classifier replicas (default 1)")
    p.add_argument("--detectors", type=at_least_one, default=1,
                   help="detector replicas (default 1): each serves the shards it leases, spares wait on standby "
                        "(EMOTION_SHARDS sets the number of shards)")
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
