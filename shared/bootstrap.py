"""Start-up shared by every service entry point: logging, Redis (with a clear error), the registry."""

from __future__ import annotations

import logging

import redis

from shared.redis_conn import connect, wait_until_up
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.streams import Keys


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def redis_from(settings: Settings, wait_s: float = 10.0) -> redis.Redis:
    """A connected client, or RedisUnavailable (one readable line) after `wait_s`."""
    client = connect(settings.redis_url)
    wait_until_up(client, settings.redis_url, wait_s)
    return client


def registry_from(settings: Settings, client: redis.Redis | None) -> ModelRegistry:
    return ModelRegistry(settings.registry_dir, client, Keys(settings.prefix), settings.default_model_dir)
