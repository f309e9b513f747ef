"""Property-based fuzz of the JSON API from its own OpenAPI document: `schemathesis run` (every phase:
examples, coverage, fuzzing, stateful; every check) against a real dashboard process (waitress) on a
populated store, on SQLite and on PostgreSQL. It fails on any 5xx, on a status, body, header or content
type the document does not promise, on invalid data accepted or valid data refused, on an undocumented
method that is not a 405, and on a request without the token that is not a 401."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests

from services.dashboard.api.routes import OPERATIONS
from shared.schemas import encode
from tests.test_dashboard_api_support import api_settings, api_store_url, start_dashboard  # noqa: F401
from tests.test_dashboard_support import emotion_event, served_model_dir  # noqa: F401

TOKEN = "fuzz-token"
# Per operation; API_FUZZ_EXAMPLES=500 for a deeper run by hand.
EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "40"))
# Valid-per-schema requests can still be refused for what a schema cannot say: a cursor this API never
# issued, end before start, too many buckets (400); a session that does not exist (404); an "image" of
# random bytes (413/415/422). Everything else the schema allows must be accepted.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "404", "413", "415", "422"]
"""


@pytest.mark.slow
def test_schemathesis_finds_nothing(api_settings, redis_client, keys, tmp_path):  # noqa: F811
    # Entries in the events stream: a generated Last-Event-ID replays them, so the live feed's
    # `emotion` events are checked against the document too.
    for frame_id in range(3):
        redis_client.xadd(keys.events, encode(emotion_event(f"cam{frame_id}", frame_id)))
    proc, base = start_dashboard(api_settings, tmp_path, auth_token=TOKEN, stream_max_s=0.3, stream_heartbeat_s=0.1,
                                 max_streams=2, max_upload_bytes=65536)
    try:
        (tmp_path / "schemathesis.toml").write_text(CONFIG)
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(tmp_path / "schemathesis.toml"), "run",
             f"{base}/api/v1/openapi.json", "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all",
             "--max-examples", str(EXAMPLES), "--seed", "1", "--workers", "1", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
        # Every documented operation was exercised (schemathesis leaves out the document's own path).
        tested = re.search(r"Tested: (\d+)", run.stdout)
        assert tested and int(tested.group(1)) == len(OPERATIONS) - 1, run.stdout[-3000:]
        # Every live feed the fuzz opened (two may run at once) was released: two more open now.
        feeds = [requests.get(f"{base}/api/v1/events/stream", headers={"Authorization": f"Bearer {TOKEN}"},
                              stream=True, timeout=10) for _ in range(2)]
        assert [f.status_code for f in feeds] == [200, 200]
        for feed in feeds:
            feed.close()
        assert proc.alive(), proc.output()[-3000:]
    finally:
        proc.stop()
