"""/metrics of a running pipeline (`emotion up`, real processes) against its own `--json` summary.

Every process gets its own metrics port from `up` (printed at the start, listed in the summary). The
test scrapes them all ten times a second while the run lasts and keeps each one's last answer; with
`EMOTION_METRICS__LINGER_S` every process keeps answering a moment after its warm stop, so the last
answer holds its final counts (the drain happened before the stop).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest

from tests.proc_utils import free_port
from tests.test_metrics import value
from tests.test_up import start_up, up_env  # noqa: F401 - fixtures

SCRAPE_EVERY_S = 0.1


def metrics_urls(stderr: str) -> dict[str, str]:
    """`emotion up: metrics: detector http://…/metrics, classifier 0 http://…` -> {name: url}."""
    line = next((line for line in stderr.splitlines() if line.startswith("emotion up: metrics: ")), None)
    if line is None:
        return {}
    return dict((name.strip(), url) for name, url in re.findall(r"([^,]+?) (http://\S+/metrics)",
                                                                  line.removeprefix("emotion up: metrics: ")))


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_metrics_counters_equal_the_up_summary(start_up, up_env):  # noqa: F811
    env = dict(up_env, EMOTION_METRICS__LINGER_S="1.5")
    run = start_up("up", "--source", "demo", "--classifiers", "2", "--duration", "6", "--no-dashboard", "--json",
                   env=env)
    last: dict[str, str] = {}
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 200
    while run.proc.poll() is None and time.monotonic() < deadline:
        urls = urls or metrics_urls(run.stderr)
        for name, url in urls.items():
            text = scrape(url)
            if text is not None:
                last[name] = text
        time.sleep(SCRAPE_EVERY_S)
    assert run.proc.wait(timeout=30) == 0, run.stderr[-3000:]
    summary = run.summary

    assert set(summary["metrics"]) == set(urls) == {"recorder", "detector", "classifier 0", "classifier 1",
                                                    "capture cam0"}, run.stderr[-2000:]
    assert len({url for url in urls.values()}) == 5, "two processes were given one port"
    assert set(last) == set(urls), f"never answered: {set(urls) - set(last)}"
    classifiers = [last["classifier 0"], last["classifier 1"]]

    assert summary["faces"] > 0 and summary["lost"] == 0
    assert value(last["capture cam0"], "emotion_frames_total") == summary["frames"]
    assert value(last["detector"], "emotion_faces_total") == summary["faces"]
    assert sum(value(text, "emotion_events_total") for text in classifiers) == summary["events"]
    assert value(last["recorder"], "emotion_events_recorded_total") == summary["recorded"] == summary["events"]
    assert value(last["detector"], "emotion_frames_without_faces_total") == summary["frames_without_faces"]
    # one latency observation per face at each stage
    assert sum(value(text, "emotion_stage_latency_seconds_count", stage="detect_to_classify")
               for text in classifiers) == summary["events"]
    assert value(last["recorder"], "emotion_stage_latency_seconds_count", stage="end_to_end") == summary["recorded"]
    assert value(last["detector"], "emotion_stage_latency_seconds_count", stage="capture_to_detect") == \
        summary["frames"]
    # the loop's view of its own group, and the model the classifiers serve
    assert value(last["classifier 0"], "emotion_consumer_group_lag", group="classifier") is not None
    assert "emotion_model_info{" in last["classifier 0"]
