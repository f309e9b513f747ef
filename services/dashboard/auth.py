"""Optional token authentication for the dashboard, required when it listens beyond localhost.

A request is let in with any of:
- `Authorization: Bearer <token>`;
- `?token=<token>` on any URL (the browser then gets an HttpOnly cookie, so Dash's own requests pass);
- HTTP basic auth whose password is the token (or `user:password` when the token is written that way).

The cookie holds an HMAC of the token, never the token, and nothing secret is ever put in a page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from flask import Flask, Response, request

from shared.settings import Settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
COOKIE = "emotion_dashboard"


class AuthConfigError(ValueError):
    """The dashboard would be reachable from the network without a token."""


def check_auth_config(settings: Settings, host: str | None = None) -> None:
    host = host or settings.dashboard.host
    if host not in LOCAL_HOSTS and not settings.dashboard.auth_token:
        raise AuthConfigError(f"the dashboard listens on {host}, beyond this machine: set EMOTION_DASHBOARD__AUTH_TOKEN "
                              "(a token, or user:password) or listen on 127.0.0.1")


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"emotion-dashboard-session", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_authorized(token: str) -> bool:
    """Whether the current Flask request carries the token in one of the accepted forms."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and _same(value.strip(), token):
        return True
    if scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if ":" in token:
            return _same(f"{user}:{password}", token)
        return _same(password, token)
    query = request.args.get("token")
    if query is not None and _same(query, token):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and _same(cookie, _cookie_value(token))


def install(server: Flask, token: str | None) -> None:
    """Guard every route of `server` (pages, Dash callbacks, assets, the API) when a token is set."""
    if not token:
        return

    @server.before_request
    def _require_token():
        if request.path == "/healthz":
            return None
        if is_authorized(token):
            return None
        return Response("authentication required: send Authorization: Bearer <token>, ?token=<token>, "
                        "or basic auth with the token as password\n", status=401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Basic realm="emotion dashboard"'})

    @server.after_request
    def _remember(response):
        if request.args.get("token") is not None and _same(request.args.get("token", ""), token):
            response.set_cookie(COOKIE, _cookie_value(token), httponly=True, samesite="Strict",
                                secure=request.is_secure)
        return response
