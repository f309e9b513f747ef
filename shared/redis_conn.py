"""Redis connections: built once from a URL and passed in explicitly (no module-level client).

With `cluster=True` (EMOTION_REDIS_CLUSTER) the client is redis-py's `RedisCluster`, seeded from the
URL's host and port: it learns the other nodes and which slots each serves, and routes every
command by its key. Everything the services send is valid there because each MULTI/EXEC stays in
one shard's hash tag (shared/streams.py). `Client` is either kind.
"""

from __future__ import annotations

import time
from typing import Union

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.retry import Retry

Client = Union[redis.Redis, RedisCluster]

# Errors that mean "Redis is unreachable right now", as opposed to a bad command. On a cluster: a
# master that is down or failing over (CLUSTERDOWN, TRYAGAIN, a slot nobody serves for a moment).
REDIS_DOWN_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionResetError, BrokenPipeError,
                     redis.exceptions.BusyLoadingError, ClusterDownError, TryAgainError, SlotNotCoveredError)


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


def connect(url: str, *, cluster: bool = False, socket_timeout: float = 10.0, connect_timeout: float = 5.0,
            retries: int = 2, health_check_interval: int = 15) -> Client:
    """A client for `url` (redis://, rediss:// for TLS, unix://) with short retries built in.

    The client keeps raw bytes (frames and crops are binary); long outages are handled by the
    callers' backoff loops, not here. A cluster client contacts its seed node at once, so one whose
    seed does not answer raises RedisUnavailable here (`connect_when_up` waits for it instead).
    """
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries) if retries else Retry(NoBackoff(), 0)
    options = dict(decode_responses=False, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                   health_check_interval=health_check_interval, retry=retry)
    if cluster:
        try:
            return RedisCluster.from_url(url, **options)
        except RedisClusterException as exc:
            raise RedisUnavailable(f"Redis Cluster at {redact(url)} is not answering ({exc})") from None
    return redis.Redis.from_url(url, retry_on_error=[redis.ConnectionError, redis.TimeoutError], **options)


def connect_when_up(url: str, timeout_s: float, *, cluster: bool = False, **options) -> Client:
    """`connect`, then wait until Redis answers PING; RedisUnavailable (one line) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            client = connect(url, cluster=cluster, **options)
            break
        except RedisUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    wait_until_up(client, url, max(0.0, deadline - time.monotonic()))
    return client


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


def wait_until_up(client: Client, url: str, timeout_s: float) -> None:
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
