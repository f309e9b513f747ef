"""`--store`: the analysis recorded as a session of the event store, as a live run of `emotion up` is.

The same writer as the recorder service (`shared.store.record_events`: events, minute rollups,
sessions, cameras, exactly once per event id), the same session markers as `emotion up`
(`open_session`/`close_session`), so the dashboard's Sessions page shows it like any other session.
Each video is a camera of the session; events are written in batches while the analysis runs.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine

from analysis.pipeline import FrameResult
from shared.schemas import EmotionEvent
from shared.store import close_session, make_engine, migrate, open_session, record_events

BATCH_EVENTS = 500
SOURCE_MAX = 500  # sessions.source is a String(500)


class StoreRecorder:
    def __init__(self, database_url: str, session_id: str, cameras: dict[str, str], started: datetime,
                 ended: datetime) -> None:
        self.session_id = session_id
        self.ended = ended
        self.recorded = 0
        self._pending: list[EmotionEvent] = []
        self.engine: Engine = make_engine(database_url)
        try:
            migrate(self.engine)
            source = "analyze: " + ", ".join(f"{camera}={path}" for camera, path in cameras.items())
            with self.engine.begin() as conn:
                open_session(conn, session_id, camera_id=None, source=source[:SOURCE_MAX], started=started)
        except BaseException:
            self.engine.dispose()
            raise

    def add(self, result: FrameResult) -> None:
        self._pending.extend(result.events)
        if len(self._pending) >= BATCH_EVENTS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.recorded += record_events(self.engine, self._pending)
            self._pending = []

    def close(self) -> None:
        try:
            self._flush()
            with self.engine.begin() as conn:
                close_session(conn, self.session_id, ended=self.ended)
        finally:
            self.engine.dispose()
