"""Who may use the dashboard: token authentication (required beyond localhost), a Host allow-list
without a token, security headers and a log line for every refused or failed request.

A request is let in with any of:
- `Authorization: Bearer <token>`;
- `?token=<token>` on any URL (the browser then gets an HttpOnly cookie, so Dash's own requests pass);
- HTTP basic auth whose password is the token (or `user:password` when the token is written that way).

The cookie holds an HMAC of the token, never the token, and nothing secret is ever put in a page or
a log line. Without a configured token, `dashboard.token_file` lets the dashboard make its own on the
first start (as Jupyter does): a fresh `docker compose up` is then both working and protected.

Without any token the dashboard only listens on this machine; it then also refuses requests whose
Host header is not a local name, so a web page cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from flask import Flask, Response, request

from shared.settings import Settings

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
COOKIE = "emotion_dashboard"
MIN_SECRET_CHARS = 16
# Values that ship in examples and documentation: whoever copied them has no secret at all.
PLACEHOLDER_TOKENS = {"change-me-please", "change-me", "changeme", "your-token", "token", "secret"}
# Answered without a token: container and Kubernetes probes, and Prometheus (counts only, no secret)
PROBE_PATHS = {"/healthz", "/readyz", "/metrics"}
# Dash serves inline scripts and plotly evaluates code, hence 'unsafe-inline'/'unsafe-eval' for
# scripts; everything is served by the dashboard itself, and no other site may frame it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
                           "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
REQUIRED = ("authentication required: send Authorization: Bearer <token>, ?token=<token>, or basic auth "
            "with the token as password")


class AuthConfigError(ValueError):
    """The dashboard would be reachable from the network without a (strong) token."""


def token_problem(token: str) -> str | None:
    """Why `token` is too weak for a dashboard on the network, or None. The token is never quoted."""
    secret = token.partition(":")[2] if ":" in token else token
    if token.lower() in PLACEHOLDER_TOKENS or secret.lower() in PLACEHOLDER_TOKENS:
        return "is the placeholder of the example configuration"
    if len(secret) < MIN_SECRET_CHARS:
        return (f"is too short ({len(secret)} character(s) of secret; at least {MIN_SECRET_CHARS}, e.g. "
                "python -c \"import secrets; print(secrets.token_urlsafe(24))\")")
    return None


def check_auth_config(settings: Settings, host: str | None = None) -> None:
    """Refuse a non-local listen address without a token (or a token file to keep one), or with a weak token."""
    host = host or settings.dashboard.host
    if host in LOCAL_HOSTS:
        return
    token = settings.dashboard.auth_token
    if token is None and settings.dashboard.token_file is None:
        raise AuthConfigError(f"the dashboard listens on {host}, beyond this machine: set "
                              "EMOTION_DASHBOARD__AUTH_TOKEN (a token, or user:password), or "
                              "EMOTION_DASHBOARD__TOKEN_FILE to keep a generated one, or listen on 127.0.0.1")
    if token is not None and (problem := token_problem(token)):
        raise AuthConfigError(f"the dashboard listens on {host}, beyond this machine, and "
                              f"EMOTION_DASHBOARD__AUTH_TOKEN {problem}")


def resolve_token(settings: Settings) -> tuple[Settings, bool]:
    """Settings whose `auth_token` is the one to enforce, and whether it was generated just now.

    A configured token wins. Otherwise, with `token_file`, the token kept there is used, or a new one
    (32 random bytes, URL-safe) is written there (mode 0600) on the first start."""
    dashboard = settings.dashboard
    if dashboard.auth_token is not None or dashboard.token_file is None:
        check_auth_config(settings)
        return settings, False
    path = Path(dashboard.token_file)
    generated = False
    token = path.read_text().strip() if path.is_file() else ""
    if not token:
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.replace(staging, path)
        generated = True
    resolved = settings.model_copy(update={"dashboard": dashboard.model_copy(update={"auth_token": token})})
    if dashboard.host not in LOCAL_HOSTS and (problem := token_problem(token)):
        raise AuthConfigError(f"the token in {path} {problem}; delete the file to have a new one generated")
    return resolved, generated


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


def host_allowed(host_header: str, extra: set[str]) -> bool:
    """Whether a Host header (`name`, `name:port`, `[::1]:port`) names this machine or an allowed name."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name in LOCAL_HOSTS or name in extra


def _refusal(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A refused request: JSON under /api/ (like every other API answer), plain text elsewhere."""
    if request.path.startswith("/api/"):
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json", headers=headers)
    return Response(message + "\n", status=status, mimetype="text/plain", headers=headers)


def install(server: Flask, token: str | None, allowed_hosts: str = "") -> None:
    """Guard every route of `server` (pages, Dash callbacks, assets, the API)."""
    extra = {name.strip().lower() for name in allowed_hosts.split(",") if name.strip()}

    @server.before_request
    def _guard():
        if request.path in PROBE_PATHS:
            return None
        if token is None:
            if host_allowed(request.host, extra):
                return None
            return _refusal(400, "unexpected Host header: without a token the dashboard answers only for localhost "
                                 "(add names to EMOTION_DASHBOARD__ALLOWED_HOSTS)")
        if is_authorized(token):
            return None
        return _refusal(401, REQUIRED, {"WWW-Authenticate": 'Basic realm="emotion dashboard"'})

    @server.after_request
    def _finish(response):
        if token is not None and request.args.get("token") is not None and _same(request.args.get("token", ""), token):
            response.set_cookie(COOKIE, _cookie_value(token), httponly=True, samesite="Strict",
                                secure=request.is_secure)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.status_code >= 400:
            # The path only: a ?token= query string, cookies and Authorization never reach the log.
            log.warning("event=http_error status=%d method=%s path=%s remote=%s", response.status_code,
                        request.method, request.path, request.remote_addr)
        return response
