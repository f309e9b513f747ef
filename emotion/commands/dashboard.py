"""`emotion dashboard`: serve the web dashboard (waitress when installed, else Flask's threaded server)."""

from __future__ import annotations

import argparse
import json

from emotion.errors import UserError


def cmd_dashboard(args) -> int:
    from services.dashboard.auth import AuthConfigError, check_auth_config
    from shared.bootstrap import configure_logging
    from shared.settings import Settings

    settings = Settings()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update={"dashboard": settings.dashboard.model_validate(
            {**settings.dashboard.model_dump(), **overrides})})
    try:
        check_auth_config(settings)
    except AuthConfigError as exc:
        raise UserError(str(exc)) from None
    if args.check_config:
        print(json.dumps({"ok": True, "command": "dashboard", "host": settings.dashboard.host,
                          "port": settings.dashboard.port, "auth": bool(settings.dashboard.auth_token)}))
        return 0
    configure_logging(settings)
    from services.dashboard.app import ListenError, serve

    try:
        serve(settings)
    except (AuthConfigError, ListenError) as exc:
        raise UserError(str(exc)) from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="serve the web dashboard (live, history, sessions, analyze, training, health)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; others need an auth token)")
    p.add_argument("--port", type=int, default=None, help="port (default 8050)")
    p.add_argument("--check-config", action="store_true", help="validate settings and exit")
    p.set_defaults(func=cmd_dashboard)
