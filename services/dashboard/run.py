"""Entry point of the dashboard: refuse to listen beyond this machine without a (strong) token, then serve."""

from __future__ import annotations

from services.dashboard.auth import AuthConfigError, check_auth_config
from shared.errors import StartupError
from shared.settings import Settings


def check(settings: Settings) -> dict:
    try:
        check_auth_config(settings)
    except AuthConfigError as exc:
        raise StartupError(str(exc)) from None
    return {"host": settings.dashboard.host, "port": settings.dashboard.port,
            "auth": bool(settings.dashboard.auth_token)}


def run(settings: Settings) -> int:
    check(settings)
    from services.dashboard.app import ListenError, serve  # Dash and the pages: only once the checks passed

    try:
        serve(settings)  # prints the address (and a generated token's login URL) once it listens
    except (AuthConfigError, ListenError) as exc:
        raise StartupError(str(exc)) from None
    return 0
