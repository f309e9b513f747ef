"""Session ids: one per run of the pipeline (`emotion up`) or of a lone camera, sortable by start time."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone


def new_session_id() -> str:
    return datetime.now(timezone.utc).strftime("s%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]
