"""Redis connections: built once from a URL and passed in explicitly (no module-level client)."""

from __future__ import annotations

import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# Errors that mean "Redis is unreachable right now", as opposed to a bad command.
REDIS_DOWN_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionResetError, BrokenPipeError,
                     redis.exceptions.BusyLoadingError)


class RedisUnavailable(RuntimeError):
    """Redis did not answer at the configured URL (the message names the URL without its password)."""


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in creds else f"{scheme}{sep}{user}@{host}"


def connect(url: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A client for `url` (redis://, rediss:// for TLS, unix://) with short retries built in.

    The client keeps raw bytes (frames and crops are binary); long outages are handled by the
    callers' backoff loops, not here.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def wait_until_up(client: redis.Redis, url: str, timeout_s: float) -> None:
    """Block until Redis answers PING, or raise RedisUnavailable after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            client.ping()
            return
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            # Caught first: AuthenticationError is a ConnectionError, and waiting will not fix a password.
            raise RedisUnavailable(f"Redis at {redact(url)} refused the credentials ({exc})") from None
        except REDIS_DOWN_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise RedisUnavailable(f"Redis at {redact(url)} is not answering ({exc})") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
