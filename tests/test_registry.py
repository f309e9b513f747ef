"""The model registry against a real Redis: register, promote, rollback, and refusal of corrupt models."""

from __future__ import annotations

import json

import pytest

from shared.model_runtime import ModelError
from shared.registry import ModelRegistry
from tests.trainer_fixtures import copy_model

pytestmark = pytest.mark.slow  # builds the fixture model with TensorFlow


@pytest.fixture
def registry(settings, redis_client, keys, tmp_path):
    return ModelRegistry(settings.registry_dir, redis_client, keys, default_dir=tmp_path / "no default")


def test_register_promote_and_rollback(registry, redis_client, keys, tmp_path):
    for version in ("v1", "v2"):
        registry.register(copy_model(tmp_path / f"src {version}", version))
    assert [m.version for m in registry.versions()] == ["v1", "v2"]
    assert registry.current_version() is None
    registry.promote("v1")
    registry.promote("v2")
    assert registry.current_version() == "v2"
    assert (registry.root / "CURRENT").read_text().strip() == "v2"
    assert redis_client.lrange(keys.model_history, 0, -1) == [b"v1"]
    assert registry.rollback() == "v1"
    assert registry.current_version() == "v1" and registry.current_dir() == registry.root / "v1"
    assert (registry.root / "CURRENT").read_text().strip() == "v1"
    with pytest.raises(ModelError, match="nothing to roll back"):
        registry.rollback()


def test_corrupt_model_is_refused_and_current_stays(registry, tmp_path):
    """Regression guard: promoting a damaged model.tflite must fail clearly and leave the served model alone."""
    registry.register(copy_model(tmp_path / "good", "good"))
    registry.promote("good")
    registry.register(copy_model(tmp_path / "bad", "bad"))
    tflite = registry.root / "bad" / "model.tflite"
    data = bytearray(tflite.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\0" * 64
    tflite.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum does not match"):
        registry.promote("bad")
    assert registry.current_version() == "good"
    assert (registry.root / "CURRENT").read_text().strip() == "good"


def test_unloadable_model_without_checksum_is_refused(registry, tmp_path):
    source = copy_model(tmp_path / "garbage", "garbage")
    (source / "model.tflite").write_bytes(b"definitely not a flatbuffer")
    metadata = json.loads((source / "metadata.json").read_text())
    metadata["sha256"] = None
    (source / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="LiteRT cannot load"):
        registry.register(source)
    assert registry.versions() == []


def test_version_names_are_checked(registry, tmp_path):
    source = copy_model(tmp_path / "src", "ok")
    with pytest.raises(ModelError, match="invalid model version"):
        registry.register(source, "../escape")
    registry.register(source, "renamed")
    assert registry.versions()[0].version == "renamed"  # metadata follows the registry name
    with pytest.raises(ModelError, match="already exists"):
        registry.register(source, "renamed")
    with pytest.raises(ModelError, match="not in the registry"):
        registry.promote("missing")


def test_each_role_has_its_own_current_version_over_one_set_of_versions(settings, redis_client, keys, tmp_path):
    fast = ModelRegistry(settings.registry_dir, redis_client, keys, role="fast")
    accurate = ModelRegistry(settings.registry_dir, redis_client, keys, role="accurate")
    for version in ("small", "big-1", "big-2"):
        fast.register(copy_model(tmp_path / f"src {version}", version))
    assert [m.version for m in accurate.versions()] == [m.version for m in fast.versions()]
    fast.promote("small")
    accurate.promote("big-1")
    accurate.promote("big-2")
    assert (fast.current_version(), accurate.current_version()) == ("small", "big-2")
    # The fast role keeps the original key and pointer file (deployments from before roles keep working).
    assert redis_client.get(keys.model_current) == b"small"
    assert (settings.registry_dir / "CURRENT").read_text().strip() == "small"
    assert (settings.registry_dir / "CURRENT-accurate").read_text().strip() == "big-2"
    assert accurate.rollback() == "big-1"
    assert fast.current_version() == "small"
    with pytest.raises(ModelError, match="nothing to roll back"):
        fast.rollback()
    # Without Redis each role still finds its pointer file.
    assert ModelRegistry(settings.registry_dir, None, keys, role="accurate").current_version() == "big-1"
    with pytest.raises(ModelError, match="unknown model role"):
        ModelRegistry(settings.registry_dir, None, keys, role="huge")


def test_the_accurate_role_falls_back_to_the_fast_default_until_an_accurate_model_is_installed(settings, tmp_path):
    from shared.bootstrap import registry_from

    fast_dir = copy_model(tmp_path / "fast model", "fast-default")
    settings = settings.model_copy(update={"default_model_dir": fast_dir, "accurate_model_dir": tmp_path / "absent"})
    assert registry_from(settings, None, "accurate").current_dir() == fast_dir
    accurate_dir = copy_model(tmp_path / "accurate model", "accurate-default")
    settings = settings.model_copy(update={"accurate_model_dir": accurate_dir})
    assert registry_from(settings, None, "accurate").current_dir() == accurate_dir
    assert registry_from(settings, None, "fast").current_dir() == fast_dir
