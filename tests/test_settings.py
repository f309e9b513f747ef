"""Settings: env vars with one prefix, bare REDIS_URL/DATABASE_URL, nested sections, strict validation."""

import pytest
from pydantic import ValidationError

from shared.settings import Settings
from shared.streams import Keys


def test_env_prefix_nested_and_bare_urls(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("EMOTION_WORKER__BATCH_SIZE", "32")
    monkeypatch.setenv("EMOTION_CLASSIFIER__THREADS", "2")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    settings = Settings()
    assert settings.redis_url == "redis://example:6380/2"
    assert settings.worker.batch_size == 32
    assert settings.classifier.threads == 2
    assert settings.database_url.startswith("postgresql")


def test_prefixed_url_wins_and_tls_urls_are_accepted(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://a/0")
    monkeypatch.setenv("EMOTION_REDIS_URL", "rediss://user:secret@b:6380/0")
    assert Settings().redis_url == "rediss://user:secret@b:6380/0"


@pytest.mark.parametrize("name, value", [
    ("EMOTION_WORKER__BATCH_SIZE", "abc"),
    ("EMOTION_WORKER__BATCH_SIZE", "0"),
    ("EMOTION_REDIS_URL", "http://example"),
    ("EMOTION_PREFIX", "has space"),
    ("EMOTION_CAPTURE__FPS", "-1"),
])
def test_bad_values_are_rejected(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_unknown_keyword_is_rejected():
    with pytest.raises(ValidationError):
        Settings(batchsize=3)


def test_keys_share_one_prefix():
    keys = Keys("dep1")
    names = [keys.frames, keys.faces, keys.events, keys.dead(keys.frames), keys.model_current,
             keys.heartbeat("detector", "c1"), keys.stats("capture"), keys.track("cam", 3)]
    assert all(n.startswith("dep1:") for n in names)
    assert keys.dead(keys.faces) == "dep1:{0}:faces:dead"


def test_misspelt_environment_variable_is_rejected(monkeypatch):
    """Guards against typos silently doing nothing (EMOTION_WORKER__BATCHSIZE instead of BATCH_SIZE)."""
    monkeypatch.setenv("EMOTION_WORKER__BATCHSIZE", "8")
    with pytest.raises(ValidationError, match="(?i)batchsize"):
        Settings()
    monkeypatch.delenv("EMOTION_WORKER__BATCHSIZE")
    monkeypatch.setenv("EMOTION_FOO", "x")
    with pytest.raises(ValidationError, match="EMOTION_FOO"):
        Settings()
