"""Reading metrics in the tests: the samples of a Prometheus exposition, the value of one series
(summed over the label sets that match), and a GET that returns the status of an HTTP error too."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    found = [v for n, got, v in samples(text) if n == name and all(got.get(k) == w for k, w in labels.items())]
    return sum(found) if found else None


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
