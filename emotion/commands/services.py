"""The service subcommands, from one table: capture, detector, classifier, recorder, dashboard.

`emotion <name>` is `python -m services.<name>` with flags: each flag overrides one settings field
(validated as the environment would be) or passes one keyword to the service's `run`. Every
service module `services/<name>/run.py` has `check(settings) -> dict` (what settings alone can tell
is wrong raises StartupError; the dict is what `--check-config` prints) and `run(settings) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from emotion.arguments import at_least_one, port
from emotion.commands.store import DATABASE_URL_HELP


@dataclass(frozen=True)
class Flag:
    option: str
    help: str
    setting: str | None = None  # the dotted settings field it overrides ...
    run_option: str | None = None  # ... or the keyword of run() it passes
    type: Callable[[str], Any] | None = None
    switch: bool = False  # a flag without a value (store_true)
    required: bool = False

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Service:
    name: str
    help: str
    flags: tuple[Flag, ...] = ()

    @property
    def module(self) -> str:
        return f"services.{self.name}.run"


SERVICES = (
    Service("capture", "publish frames of one camera/source to the frames stream", (
        Flag("--source", "webcam index (0), video file, rtsp/http URL, image folder or glob, 'demo', "
                         "or 'demo:PATH.npz' (FER-2013 faces)", setting="capture.source", required=True),
        Flag("--camera-id", "name of this camera (letters, digits, _.:-)", setting="capture.camera_id", required=True),
        Flag("--fps", "frames per second to publish (default 15)", setting="capture.fps", type=float),
        Flag("--loop", "restart file sources at their end", setting="capture.loop", switch=True),
        Flag("--shard", "the shard this camera's frames go to (0 to EMOTION_SHARDS-1; default: a hash of the camera id)",
             setting="capture.shard", type=int),
        Flag("--session", "session id (default: a new one)", run_option="session_id"),
        Flag("--max-frames", "stop after this many frames", run_option="max_frames", type=at_least_one),
        Flag("--json", "print capture statistics as JSON at the end", run_option="print_json", switch=True))),
    Service("detector", "find and crop faces (consumer group detector; one replica per shard, spares on standby)"),
    Service("classifier", "classify faces (consumer group classifier)", (
        Flag("--threads", "inference threads", setting="classifier.threads", type=at_least_one),)),
    Service("recorder", "store emotion events in the SQL store (consumer group recorder)", (
        Flag("--database-url", DATABASE_URL_HELP, setting="database_url"),
        Flag("--retention-days", "delete events older than this many days", setting="recorder.retention_days",
             type=int))),
    Service("dashboard", "serve the web dashboard (live, history, sessions, analyze, training, health)", (
        Flag("--host", "address to listen on (default 127.0.0.1; others need an auth token)", setting="dashboard.host"),
        Flag("--port", "port (default 8050)", setting="dashboard.port", type=port))),
)


def _command(service: Service):
    def command(args) -> int:
        from shared.bootstrap import configure_logging
        from shared.settings import Settings, with_overrides

        given = {flag: getattr(args, flag.dest) for flag in service.flags if getattr(args, flag.dest) is not None}
        settings = with_overrides(Settings(), {flag.setting: value for flag, value in given.items() if flag.setting})
        module = importlib.import_module(service.module)
        if args.check_config:
            print(json.dumps({"ok": True, "command": service.name, **module.check(settings)}))
            return 0
        configure_logging(settings)
        return module.run(settings, **{flag.run_option: value for flag, value in given.items() if flag.run_option})

    return command


def register(sub: argparse._SubParsersAction) -> None:
    for service in SERVICES:
        p = sub.add_parser(service.name, help=service.help)
        for flag in service.flags:
            if flag.switch:
                p.add_argument(flag.option, action="store_true", default=None, help=flag.help)
            else:
                p.add_argument(flag.option, type=flag.type, required=flag.required, default=None, help=flag.help)
        p.add_argument("--check-config", action="store_true", help="validate settings and exit")
        p.set_defaults(func=_command(service))
