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

from tests.metrics_utils import samples, value
from tests.proc_utils import free_port

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


LAYOUTS = {
    # one shard: one detector, one camera, two classifiers
    "one shard": ({}, ("--source", "demo", "--classifiers", "2"),
                  {"recorder", "detector", "classifier 0", "classifier 1", "capture cam0"}),
    # two shards, a camera in each, two detector replicas leasing one shard each, and every other
    # process running one worker loop per shard on its threads: still one metrics port per process
    "two shards": ({"EMOTION_SHARDS": "2", "EMOTION_CAPTURE__FPS": "8"},
                   ("--source", "demo", "--source", "demo", "--detectors", "2", "--classifiers", "2"),
                   {"recorder", "detector 0", "detector 1", "classifier 0", "classifier 1", "capture cam0",
                    "capture cam1"}),
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_metrics_counters_equal_the_up_summary(start_up, up_env, layout):
    extra_env, args, names = LAYOUTS[layout]
    env = dict(up_env, EMOTION_METRICS__LINGER_S="1.5", **extra_env)
    run = start_up("up", *args, "--duration", "6", "--no-dashboard", "--json", env=env)
    last: dict[str, str] = {}
    served: dict[str, float] = {}  # the shards each process served last before its stop (then 0)
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 200
    while run.proc.poll() is None and time.monotonic() < deadline:
        urls = urls or metrics_urls(run.stderr)
        for name, url in urls.items():
            text = scrape(url)
            if text is not None:
                last[name] = text
                served[name] = value(text, "emotion_shards_served") or served.get(name, 0)
        time.sleep(SCRAPE_EVERY_S)
    assert run.proc.wait(timeout=30) == 0, run.stderr[-3000:]
    summary = run.summary

    assert set(summary["metrics"]) == set(urls) == names, run.stderr[-2000:]
    assert len({url for url in urls.values()}) == len(names), "two processes were given one port"
    assert set(last) == set(urls), f"never answered: {set(urls) - set(last)}"

    def total(role: str, name: str, **labels: str) -> float:
        """A counter summed over every process of `role` (replicas, cameras)."""
        return sum(value(text, name, **labels) or 0 for process, text in last.items() if process.startswith(role))

    assert summary["faces"] > 0 and summary["lost"] == 0
    assert total("capture", "emotion_frames_total") == summary["frames"]
    assert total("detector", "emotion_faces_total") == summary["faces"]
    assert total("classifier", "emotion_events_total") == summary["events"]
    assert total("recorder", "emotion_events_recorded_total") == summary["recorded"] == summary["events"]
    assert total("detector", "emotion_frames_without_faces_total") == summary["frames_without_faces"]
    # one latency observation per face at each stage
    assert total("classifier", "emotion_stage_latency_seconds_count", stage="detect_to_classify") == summary["events"]
    assert total("recorder", "emotion_stage_latency_seconds_count", stage="end_to_end") == summary["recorded"]
    assert total("detector", "emotion_stage_latency_seconds_count", stage="capture_to_detect") == summary["frames"]
    # the loop's view of its own group in every shard, and the model the classifiers serve
    shards = summary["shards"]
    for process in ("classifier 0", "recorder"):
        streams = {labels["stream"] for name, labels, _ in samples(last[process])
                   if name == "emotion_consumer_group_pending"}
        assert len(streams) == shards, (process, streams)
    assert "emotion_model_info{" in last["classifier 0"]
    # each process serves every shard (classifiers, recorder) or its leased share (detectors)
    assert served["classifier 0"] == served["recorder"] == shards
    assert sum(count for process, count in served.items() if process.startswith("detector")) == shards
    # the entries each shard's loop acknowledged, summed over the shards, are the process's total
    assert total("classifier", "emotion_entries_processed_total") == summary["faces"]
