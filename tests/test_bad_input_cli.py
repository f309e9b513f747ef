"""Bad sources and bad configuration through the real `emotion` command: a non-zero exit and one clear
error line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.proc_utils import clean_env, find_model_dir

MODEL = find_model_dir()
OK_REDIS = "redis://127.0.0.1:6379/8"


def run_cli(args: list[str], env_extra: dict[str, str], timeout: float = 40.0) -> subprocess.CompletedProcess:
    env = clean_env(**{"EMOTION_PREFIX": "clibad", "EMOTION_REGISTRY_DIR": "/nonexistent-registry-for-tests",
                       "EMOTION_DEFAULT_MODEL_DIR": str(MODEL or "/nonexistent"), **env_extra})
    env.setdefault("EMOTION_REDIS_URL", OK_REDIS)
    return subprocess.run([sys.executable, "-m", "emotion", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True, stdin=subprocess.DEVNULL)


def assert_clear_failure(result: subprocess.CompletedProcess, command: str, *expected: str) -> str:
    stderr = result.stderr
    assert result.returncode != 0, (result.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    ours = [line for line in stderr.splitlines() if line.startswith(f"emotion {command}:")]
    assert len(ours) == 1, stderr  # OpenCV/FFmpeg may add their own [ WARN ] lines; ours is one line
    line = ours[0]
    assert "error" in line or "invalid" in line
    for text in expected:
        assert text in line, line
    return line


SOURCE_CASES = [
    (["--source", "7"], "webcam 7"),
    (["--source", "/nonexistent/video.mp4"], "/nonexistent/video.mp4"),
    (["--source", "/nonexistent/dir/*.png"], "no images"),
    (["--source", "rtsp://127.0.0.1:1/x"], "rtsp://127.0.0.1:1/x"),
    (["--source", "demo:/nonexistent.npz"], "does not exist"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,expected", SOURCE_CASES, ids=["webcam", "file", "glob", "rtsp", "fer-demo"])
def test_bad_sources_fail_clearly(args, expected):
    result = run_cli(["capture", *args, "--camera-id", "x"], {})
    assert_clear_failure(result, "capture", expected)


@pytest.mark.timeout(60)
def test_a_file_that_is_not_a_video_fails_clearly(tmp_path):
    bogus = tmp_path / "notavideo.mp4"
    bogus.write_text("hello")
    assert_clear_failure(run_cli(["capture", "--source", str(bogus), "--camera-id", "x"], {}), "capture", "video file")


ENV_CASES = [
    ({"EMOTION_WORKER__BATCH_SIZE": "abc"}, "batch_size"),
    ({"EMOTION_WORKER__BATCH_SIZE": "0"}, "batch_size"),
    ({"EMOTION_REDIS_URL": "http://x"}, "redis"),
    ({"EMOTION_WORKER__TYPO": "1"}, "typo"),
    ({"EMOTION_CAPTURE__FPS": "-1"}, "fps"),
    ({"EMOTION_LOG_LEVEL": "LOUD"}, "log_level"),
    ({"EMOTION_PREFIX": "has space"}, "prefix"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("env,expected", ENV_CASES, ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _ in ENV_CASES])
@pytest.mark.parametrize("command", ["classifier", "capture"])
def test_malformed_environment_fails_clearly(command, env, expected):
    args = ["capture", "--source", "demo", "--camera-id", "x", "--max-frames", "1"] if command == "capture" else [command]
    line = assert_clear_failure(run_cli(args, env), command, "invalid configuration")
    assert expected.lower() in line.lower()


@pytest.mark.timeout(60)
def test_missing_model_fails_clearly(tmp_path):
    result = run_cli(["classifier"], {"EMOTION_DEFAULT_MODEL_DIR": "/nonexistent",
                                      "EMOTION_REGISTRY_DIR": str(tmp_path / "empty-registry")})
    assert_clear_failure(result, "classifier", "no current model")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("args", [["classifier"], ["detector"], ["capture", "--source", "demo", "--camera-id", "x"]],
                         ids=["classifier", "detector", "capture"])
def test_unreachable_redis_fails_clearly(args):
    if MODEL is None and args[0] != "capture":
        pytest.skip("no exported model: neither models/default nor /tmp/model-tmp exists")
    result = run_cli(args, {"EMOTION_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert_clear_failure(result, args[0], "redis://127.0.0.1:1/0", "not answering")


@pytest.mark.timeout(30)
def test_bad_log_level_flag_fails_clearly():
    result = run_cli(["--log-level", "LOUD", "detector", "--check-config"], {})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fps", ["-5", "100000"])
def test_out_of_range_fps_flag_is_refused(fps):
    result = run_cli(["capture", "--source", "demo", "--camera-id", "x", "--max-frames", "1", "--fps", fps], {})
    assert_clear_failure(result, "capture", "fps")
