"""The one model follower of the detector and the classifier, against a real registry and Redis."""

from __future__ import annotations

import shutil

import pytest

from shared.model_follower import ModelFollower
from shared.model_runtime import ModelError, read_metadata
from shared.registry import ModelRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(settings, redis_client, keys, model_dir, tmp_path):
    registry = ModelRegistry(settings.registry_dir, redis_client, keys, model_dir)
    for version in ("v1", "v2"):
        shutil.copytree(model_dir, tmp_path / version)
        registry.register(tmp_path / version, version=version)
    registry.promote("v1")
    return registry


def test_a_promotion_is_followed_at_the_next_check_only(registry):
    clock = Clock()
    follower = ModelFollower(registry, read_metadata, serving=registry.current_dir(), every_s=1.0,
                             service="test", clock=clock)
    clock.now = 1.0
    assert follower.poll() is None  # nothing moved
    registry.promote("v2")
    clock.now = 1.5
    assert follower.poll() is None  # not yet time to look
    clock.now = 2.0
    assert follower.poll().version == "v2"
    assert follower.serving == registry.path("v2") and follower.swaps == 1
    clock.now = 3.0
    assert follower.poll() is None


def test_a_model_that_fails_to_load_is_reported_and_retried(registry, redis_client, keys):
    clock = Clock()
    refuse = {"v2"}

    def load(directory):
        if directory.name in refuse:
            raise ModelError(f"{directory.name} is broken")
        return read_metadata(directory)

    follower = ModelFollower(registry, load, serving=registry.current_dir(), every_s=1.0, service="test", clock=clock)
    registry.promote("v2")
    clock.now = 1.0
    assert follower.poll() is None and follower.error == "v2 is broken"
    assert follower.serving == registry.path("v1") and follower.heartbeat_info()["model_error"] == "v2 is broken"
    redis_client.set(keys.model_current, "missing")  # a tampered pointer
    clock.now = 2.0
    assert follower.poll() is None and "not in the registry" in follower.error
    refuse.clear()
    registry.promote("v2")
    clock.now = 3.0
    assert follower.poll().version == "v2" and follower.error is None
