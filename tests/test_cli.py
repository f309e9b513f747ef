"""The `emotion` command itself (emotion/cli.py): every flag explains itself, configuration errors are
one readable line that names the variable actually set, and a closed pipe is not a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from emotion.cli import build_parser
from tests.proc_utils import clean_env


def _actions(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_flag_and_argument_has_help_text():
    missing = [f"{path} {action.option_strings or action.dest}" for path, action in _actions(build_parser(), "emotion")
               if not (action.help and action.help.strip())]
    assert not missing, "flags without help text:\n" + "\n".join(missing)


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emotion", *args], env=clean_env(**env), capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


@pytest.mark.parametrize("env,expected", [
    ({"EMOTION_TYPO": "1"}, "invalid configuration: unknown setting(s) in the environment: EMOTION_TYPO"),
    ({"REDIS_URL": "http://x"}, "invalid configuration: REDIS_URL: must start with redis://"),
    ({"EMOTION_REDIS_URL": "http://x"}, "invalid configuration: EMOTION_REDIS_URL: must start with redis://"),
])
def test_configuration_errors_are_one_clean_line(env, expected):
    """No empty location (`invalid configuration: : Value error, …`), no pydantic prefix, and the URL read
    from REDIS_URL is blamed on REDIS_URL."""
    result = run(["detector", "--check-config"], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"emotion detector: {expected}" + lines[0].split(expected, 1)[1]], result.stderr
    assert ": :" not in lines[0] and "Value error" not in lines[0]


@pytest.mark.timeout(120)
def test_export_to_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`emotion export … --output - | head -1` used to end in a BrokenPipeError traceback."""
    from shared.store import make_engine, migrate, record_events
    from tests.test_store_support import make_event

    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    migrate(url)
    engine = make_engine(url)
    record_events(engine, [make_event(i) for i in range(20_000)])
    engine.dispose()
    command = (f"{sys.executable} -m emotion export --from 2026-01-01 --to 2026-01-02 --output - "
               f"--database-url {url} | head -1")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=clean_env(), capture_output=True,
                            text=True, timeout=100)
    assert result.stdout.startswith("time,") or "event_id" in result.stdout, result.stdout[:200]
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141  # like `yes | head`: stopped by its reader, not failed
