"""`emotion train | evaluate | job | models ...` as a user runs them (real Redis, fixture models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rq.job import Job, JobStatus

from emotion.cli import main
from shared.registry import ModelRegistry
from tests.trainer_fixtures import copy_model, exported_model, write_fer_folder, write_npz
from trainer.jobs import serializer

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env(monkeypatch, redis_url, redis_client, tmp_path):
    """Environment for the CLI: the test Redis database, prefix t, a registry under tmp_path."""
    env = {"EMOTION_REDIS_URL": redis_url, "EMOTION_PREFIX": "t", "EMOTION_REGISTRY_DIR": str(tmp_path / "registry"),
           "EMOTION_DEFAULT_MODEL_DIR": str(tmp_path / "no default")}
    monkeypatch.delenv("REDIS_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def registry(cli_env, redis_client, keys):
    return ModelRegistry(Path(cli_env["EMOTION_REGISTRY_DIR"]), redis_client, keys)


def run_cli(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_") and k != "REDIS_URL"}
    full_env.update(env, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "emotion", *args], env=full_env, cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def test_evaluate_json_on_small_npz(cli_env, tmp_path):
    """--json prints one JSON object as the last stdout line, with plain and flip-TTA scores."""
    data = write_npz(tmp_path / "small set.npz", 35, seed=9)
    done = run_cli("evaluate", "--model", str(exported_model()), "--data", str(data), "--json", env=cli_env,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("top1", "top2", "macro_f1", "top1_tta", "top2_tta", "macro_f1_tta"):
        assert 0.0 <= result[key] <= 1.0
    assert result["n"] == 35 and result["split"] == "small set" and result["model_version"] == "fixture"

    done = run_cli("evaluate", "--model", str(exported_model()), "--data", str(data), "--split", "PrivateTest",
                   "--json", "--no-tta", env=cli_env, cwd=tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["split"] == "PrivateTest" and "top1_tta" not in result


def test_evaluate_defaults_to_current_model_and_prints_a_table(cli_env, registry, tmp_path, capsys):
    registry.register(copy_model(tmp_path / "src", "current-one"))
    registry.promote("current-one")
    data = write_fer_folder(tmp_path / "fer", n_train=14, n_val=21)
    assert main(["evaluate", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "current-one" in out and "| PublicTest | 21 |" in out and "faces/s" in out
    assert main(["evaluate", "--model", "current-one", "--data", str(data), "--split", "Training", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 14


def test_evaluate_user_mistakes_exit_2(cli_env, registry, tmp_path, capsys):
    data = write_fer_folder(tmp_path / "fer", n_train=14, n_val=21)
    assert main(["evaluate", "--data", str(data)]) == 2  # empty registry, no default model
    assert "no current model" in capsys.readouterr().err
    assert main(["evaluate", "--model", "nope", "--data", str(data)]) == 2
    assert main(["evaluate", "--model", str(exported_model()), "--data", str(tmp_path / "missing")]) == 2
    assert main(["evaluate", "--model", str(exported_model()), "--data", str(data), "--split", "PrivateTest"]) == 2
    assert "available: PublicTest, Training" in capsys.readouterr().err


def test_models_list_promote_rollback(cli_env, registry, tmp_path, capsys):
    registry.register(copy_model(tmp_path / "a", "v-a", top1=0.5))
    registry.register(copy_model(tmp_path / "b", "v-b", top1=0.6))
    assert main(["models", "promote", "v-a"]) == 0
    assert main(["models", "promote", "v-b"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert listing["current"] == "v-b"
    assert [(v["version"], v["current"], v["top1"]) for v in listing["versions"]] == [("v-a", False, 0.5),
                                                                                    ("v-b", True, 0.6)]
    assert main(["models", "list"]) == 0
    assert "* v-b" in capsys.readouterr().out
    assert main(["models", "rollback"]) == 0
    assert "rolled back to v-a" in capsys.readouterr().out
    assert registry.current_version() == "v-a"


def test_models_list_names_the_served_default_and_needs_redis(cli_env, tmp_path, capsys, monkeypatch, model_dir):
    """`models list` used to say `no models in registry` (exit 0) with Redis down, and never named the
    shipped default model that is served while no version is promoted."""
    monkeypatch.setenv("EMOTION_DEFAULT_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("EMOTION_ACCURATE_MODEL_DIR", str(tmp_path / "no accurate model"))
    assert main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert listing["serving"]["fast"] == {"version": "default", "dir": str(model_dir)}
    assert [(v["version"], v["current"]) for v in listing["versions"]] == [("default", True)]
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"serving (fast, live classifiers): default ({model_dir})" in out and "* default" in out
    monkeypatch.setenv("EMOTION_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emotion models: error: Redis at redis://127.0.0.1:1/0 is not answering"), err


def test_evaluate_refuses_to_relabel_a_known_split(cli_env, tmp_path, capsys):
    """`evaluate --split Training` on a PublicTest file used to report the scores as Training's."""
    data = write_npz(tmp_path / "fer2013_publictest.npz", 14, seed=3)
    assert main(["evaluate", "--model", str(exported_model()), "--data", str(data), "--split", "Training"]) == 2
    assert "holds the PublicTest split, not Training" in capsys.readouterr().err


def test_train_enqueue_refuses_a_path_that_is_no_dataset(cli_env, redis_client, capsys):
    assert main(["train", "--data", "/etc", "--enqueue"]) == 2
    assert "/etc does not look like a FER-2013 dataset" in capsys.readouterr().err
    assert redis_client.llen("rq:queue:training") == 0


def test_models_promote_refuses_corrupt_model(cli_env, registry, tmp_path, capsys):
    """A damaged model.tflite: exit 2 with one clear line, and the current model keeps serving."""
    registry.register(copy_model(tmp_path / "a", "good"))
    registry.register(copy_model(tmp_path / "b", "broken"))
    registry.promote("good")
    (registry.root / "broken" / "model.tflite").write_bytes(b"truncated")
    assert main(["models", "promote", "broken"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emotion models: error:") and "checksum does not match" in err and "\n" not in err
    assert registry.current_version() == "good"
    assert main(["models", "rollback"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


def test_train_enqueue_prints_job_id(cli_env, redis_client, tmp_path, capsys):
    data = write_fer_folder(tmp_path / "fer", n_train=14, n_val=7)
    assert main(["train", "--data", str(data), "--model", "compact16", "--epochs", "3", "--enqueue"]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    job = Job.fetch(job_id, connection=redis_client, serializer=serializer())
    assert job.get_status() == JobStatus.QUEUED and json.loads(job.args[0])["epochs"] == 3
    assert main(["job", "status", job_id]) == 0
    assert json.loads(capsys.readouterr().out.strip())["meta"]["stage"] == "queued"
    assert main(["job", "cancel", job_id]) == 0
    assert job.get_status(refresh=True) == JobStatus.CANCELED


def test_train_user_mistakes_exit_2(cli_env, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--promote", "never", "--run-dir",
                 str(tmp_path / "run")]) == 2
    assert "error:" in capsys.readouterr().err


def test_train_foreground_registers_and_promotes(cli_env, registry, tmp_path, capsys):
    """`emotion train` in the foreground: tiny run, then export + evaluate + register + promote, JSON last line."""
    data = write_fer_folder(tmp_path / "fer data", n_train=140, n_val=35)
    code = main(["train", "--data", str(data), "--model", "compact16", "--epochs", "1", "--batch-size", "32",
                 "--max-images", "70", "--run-dir", str(tmp_path / "run dir"), "--promote", "always",
                 "--version", "cli-v1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["version"] == "cli-v1" and summary["promoted"] and summary["train_images"] == 70
    assert registry.current_version() == "cli-v1"
    assert np.isclose(registry.versions()[0].metrics["PublicTest"]["top1"], summary["metrics"]["top1"])


def test_report_command_reproduces_the_training_config(tmp_path):
    """The command written into a model's report.md parses back to the same TrainConfig."""
    import shlex

    from emotion.cli import build_parser
    from emotion.commands.training import _train_config
    from shared.training import TrainConfig, train_command

    data = write_fer_folder(tmp_path / "fer data")
    extra = tmp_path / "extra"
    extra.mkdir()
    original = TrainConfig(data=data, extra=[extra], model="compact16", epochs=3, batch_size=64,
                           learning_rate=1e-3, fer_weight=0.7, require_face=True, max_images=140,
                           init_from=exported_model(), run_dir=tmp_path / "run", promote="never", patience=7)
    command, other = train_command(original.model_dump(mode="json"))
    assert other == {"patience": 7}  # no flag for it: the report lists it beside the command
    argv = shlex.split(command)
    assert argv[:2] == ["emotion", "train"]
    parsed = _train_config(build_parser().parse_args(argv[1:]))
    assert parsed.model_dump(exclude={"patience"}) == original.model_dump(exclude={"patience"})


def test_evaluate_model_accepts_a_role_a_version_or_a_directory(cli_env, registry, tmp_path, capsys, monkeypatch):
    fast_dir = copy_model(tmp_path / "fast", "fast-default")
    accurate_dir = copy_model(tmp_path / "accurate", "accurate-default")
    monkeypatch.setenv("EMOTION_DEFAULT_MODEL_DIR", str(fast_dir))
    monkeypatch.setenv("EMOTION_ACCURATE_MODEL_DIR", str(accurate_dir))
    registry.register(copy_model(tmp_path / "src", "registered-one"))
    data = write_fer_folder(tmp_path / "fer", n_train=14, n_val=21)

    def answered(*model: str) -> str:
        assert main(["evaluate", *model, "--data", str(data), "--no-tta", "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model_version"]

    assert answered() == "fast-default"
    assert answered("--model", "fast") == "fast-default"
    assert answered("--model", "accurate") == "accurate-default"
    assert answered("--model", "registered-one") == "registered-one"
    assert answered("--model", str(accurate_dir)) == "accurate-default"
    ModelRegistry(Path(cli_env["EMOTION_REGISTRY_DIR"]), registry.client, registry.keys, role="accurate").promote(
        "registered-one")
    assert answered("--model", "accurate") == "registered-one"
    assert answered("--model", "fast") == "fast-default"
