"""Start-up shared by every service entry point: logging, Redis (with a clear error), the registry,
and what `python -m services.<name>` does."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, NoReturn

import redis
from pydantic import ValidationError

from shared.errors import StartupError
from shared.model_runtime import ModelError
from shared.redis_conn import Client, RedisUnavailable, connect_when_up
from shared.registry import ModelRegistry, Role
from shared.settings import Settings, describe_validation_error
from shared.streams import Keys


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def redis_from(settings: Settings, wait_s: float = 10.0) -> Client:
    """A connected client (a cluster client with EMOTION_REDIS_CLUSTER), or RedisUnavailable (one
    readable line) after `wait_s`."""
    return connect_when_up(settings.redis_url, wait_s, cluster=settings.redis_cluster)


QUEUE_ON_CLUSTER = ("the training queue (RQ) needs a single-node Redis, and REDIS_URL is a Redis Cluster "
                    "(EMOTION_REDIS_CLUSTER): set EMOTION_QUEUE_REDIS_URL to one")


def queue_url(settings: Settings) -> str:
    """Where the RQ training queue lives: EMOTION_QUEUE_REDIS_URL, else REDIS_URL unless that is a
    cluster (RQ's transactions span keys of many slots: it runs on one node only)."""
    if settings.queue_redis_url:
        return settings.queue_redis_url
    if settings.redis_cluster:
        raise StartupError(QUEUE_ON_CLUSTER)
    return settings.redis_url


def queue_redis_from(settings: Settings, wait_s: float = 10.0) -> Client:
    """A connected single-node client of the training queue's Redis (StartupError: none configured)."""
    return connect_when_up(queue_url(settings), wait_s)


def registry_from(settings: Settings, client: redis.Redis | None, role: Role = "fast") -> ModelRegistry:
    """The registry seen through one model role; the accurate role falls back to the fast default model
    while no accurate model is installed, so analysis always has a model to answer with."""
    default_dir = settings.default_model_dir
    if role == "accurate" and (Path(settings.accurate_model_dir) / "metadata.json").exists():
        default_dir = settings.accurate_model_dir
    return ModelRegistry(settings.registry_dir, client, Keys.of(settings), default_dir, role)


def service_main(name: str, run: Callable[[Settings], int]) -> NoReturn:
    """Settings from the environment, logging, `run(settings)`, exit with its code; a mistake the user
    can fix is one line on stderr and exit code 2 (as `emotion <name>` does)."""
    try:
        settings = Settings()
        configure_logging(settings)
        code = run(settings)
    except ValidationError as exc:
        print(f"{name}: invalid configuration: {describe_validation_error(exc)}", file=sys.stderr)
        code = 2
    except (StartupError, RedisUnavailable, ModelError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


def answering_role(settings: Settings, directory: Path, requested: Role) -> Role:
    """The role whose model `directory` is: the accurate role answers with the fast default model while
    no accurate model is installed, and that should be said, not hidden."""
    fallback = requested == "accurate" and Path(directory).resolve() == Path(settings.default_model_dir).resolve()
    return "fast" if fallback else requested
