"""What every page needs, built once per app: settings, a Redis client with short timeouts, the store,
the model registry and (lazily) the model used by the Analyze page.

Nothing here may hang a request: Redis calls time out in about two seconds, store queries run on a
small thread pool and are abandoned after `query_timeout_s`, and every failure becomes a
`SourceUnavailable` whose message the page shows in its error banner until the next refresh works.
Messages are one readable line: never SQL, never a traceback. The store is migrated when it is first
opened (as the recorder does), so a store the recorder has not prepared yet is an empty history,
not an error. The model is local: with Redis away, the registry's CURRENT file says which to serve.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import redis

from services.dashboard.live import EventWindow
from shared.redis_conn import REDIS_DOWN_ERRORS, Client, RedisUnavailable, connect, redact
from shared.bootstrap import answering_role, queue_url, registry_from
from shared.errors import StartupError
from shared.registry import ModelRegistry, Role
from shared.settings import Settings
from shared.streams import Keys

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0
QUERY_TIMEOUT_S = 8.0


class SourceUnavailable(RuntimeError):
    """Redis, the store or the model cannot answer right now; the message is safe to show on the page."""


class DashboardContext:
    def __init__(self, settings: Settings, *, query_timeout_s: float = QUERY_TIMEOUT_S) -> None:
        self.settings = settings
        self.keys = Keys.of(settings)
        self._redis: Client | None = None
        self._queue: Client | None = None
        self._redis_lock = threading.Lock()
        self.query_timeout_s = query_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-query")
        self._lock = threading.Lock()
        self._engine = None
        self._model = None
        self._model_dir = None
        self._model_lock = threading.Lock()
        self._detector = None
        self._events: EventWindow | None = None

    # --- Redis ---------------------------------------------------------------------------------

    @property
    def redis(self) -> Client:
        """The client, made on first use: a cluster client contacts its seed when made, and a dashboard
        must start (and show why it cannot read) while Redis is still away."""
        with self._redis_lock:
            if self._redis is None:
                self._redis = connect(self.settings.redis_url, cluster=self.settings.redis_cluster,
                                      socket_timeout=REDIS_TIMEOUT_S, connect_timeout=1.0, retries=0,
                                      health_check_interval=10)
            return self._redis

    def queue_call(self, fn: Callable[[Client], Any]) -> Any:
        """`redis_call` on the training queue's Redis (the same one unless EMOTION_QUEUE_REDIS_URL)."""
        if not self.settings.queue_redis_url and not self.settings.redis_cluster:
            return self.redis_call(fn)
        try:
            url = queue_url(self.settings)
        except StartupError as exc:
            raise SourceUnavailable(str(exc)) from None
        with self._redis_lock:
            if self._queue is None:
                self._queue = connect(url, socket_timeout=REDIS_TIMEOUT_S, connect_timeout=1.0, retries=0,
                                      health_check_interval=10)
        try:
            return fn(self._queue)
        except REDIS_DOWN_ERRORS as exc:
            raise SourceUnavailable(f"the training queue's Redis at {redact(url)} is not answering "
                                    f"({type(exc).__name__})") from None

    @property
    def events(self) -> EventWindow:
        """The last minute of events, shared by every browser (made with the client)."""
        with self._redis_lock:
            if self._events is not None:
                return self._events
        window = EventWindow(self.redis, self.keys)
        with self._redis_lock:
            self._events = self._events or window
            return self._events

    def redis_call(self, fn: Callable[[Client], Any]) -> Any:
        """Run `fn(client)`; an unreachable Redis becomes SourceUnavailable with a readable message."""
        try:
            return fn(self.redis)
        except RedisUnavailable as exc:
            raise SourceUnavailable(str(exc)) from None
        except REDIS_DOWN_ERRORS as exc:
            raise SourceUnavailable(f"Redis at {redact(self.settings.redis_url)} is not answering "
                                    f"({type(exc).__name__})") from None
        except redis.AuthenticationError:
            raise SourceUnavailable(f"Redis at {redact(self.settings.redis_url)} refused the credentials") from None

    # --- the SQL store ---------------------------------------------------------------------------

    def engine(self):
        """The store's engine, migrated to the newest schema on first use (a failure is retried on the
        next call: the database may still be starting)."""
        from shared.store import describe_db_error, make_engine, migrate

        with self._lock:
            if self._engine is None:
                try:
                    engine = make_engine(self.settings.database_url)
                except Exception as exc:  # noqa: BLE001 - any driver error is shown, not raised
                    raise SourceUnavailable(f"cannot open the event store: {describe_db_error(exc)}") from None
                try:
                    migrate(engine)
                except Exception as exc:  # noqa: BLE001 - as above
                    engine.dispose()
                    log.warning("event=store_migrate_failed error=%r", exc)
                    raise SourceUnavailable(f"the event store is not ready: {describe_db_error(exc)}") from None
                self._engine = engine
            return self._engine

    def query(self, name: str, *args, **kwargs) -> Any:
        """Call `shared.store.queries.<name>(engine, ...)` with a time limit."""
        from shared.store import describe_db_error, queries

        # The engine is opened (and the store migrated) on the pool too: a database that hangs at
        # its first use must not hang the request either.
        future = self._pool.submit(lambda: getattr(queries, name)(self.engine(), *args, **kwargs))
        try:
            return future.result(timeout=self.query_timeout_s)
        except FutureTimeout:
            raise SourceUnavailable(f"the event store did not answer within {self.query_timeout_s:.0f} s") from None
        except SourceUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken database must not break the page
            log.warning("event=store_query_failed query=%s error=%r", name, exc, exc_info=True)
            raise SourceUnavailable(f"event store query failed: {describe_db_error(exc)}") from None

    # --- models ----------------------------------------------------------------------------------

    def registry(self, role: Role = "fast") -> ModelRegistry:
        try:
            client = self.redis
        except RedisUnavailable:
            client = None  # the registry's CURRENT file says what to serve meanwhile
        return registry_from(self.settings, client, role)

    def detector(self):
        with self._model_lock:
            if self._detector is None:
                from shared.faces import make_detector

                self._detector = make_detector(self.settings.detector)
            return self._detector

    def model_dir(self):
        """Directory of the model to serve: the current version per Redis, or, with Redis away, per the
        registry's CURRENT file (else the shipped default): analysing a photo needs no Redis."""
        from shared.model_runtime import ModelError

        role = self.settings.analyze.model_role
        try:
            try:
                return self.redis_call(lambda _c: self.registry(role).current_dir())
            except SourceUnavailable as exc:
                log.info("event=model_pointer_from_file reason=%r", str(exc))
                return registry_from(self.settings, None, role).current_dir()
        except ModelError as exc:
            raise SourceUnavailable(str(exc)) from None

    def model(self):
        """The currently promoted model (reloaded after a promotion), as a thread-safe wrapper."""
        from shared.model_runtime import EmotionModel, ModelError

        directory = self.model_dir()
        with self._model_lock:
            if self._model is None or self._model_dir != directory:
                try:
                    model = EmotionModel(directory)
                    role = answering_role(self.settings, directory, self.settings.analyze.model_role)
                    self._model = _LockedModel(model, role, model.effective_tta(self.settings.analyze.tta))
                except ModelError as exc:
                    raise SourceUnavailable(str(exc)) from None
                self._model_dir = directory
            return self._model

    def readiness(self) -> dict[str, str]:
        """`ok`, or why not, for each thing the dashboard needs: Redis, the event store, the model."""
        checks = {}
        for name, probe in (("redis", lambda: self.redis_call(lambda c: c.ping())),
                            ("store", lambda: self.query("ping")),
                            ("model", self.model)):
            try:
                probe()
                checks[name] = "ok"
            except SourceUnavailable:
                checks[name] = "unavailable"
        return checks

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in (self._redis, self._queue):
            if client is not None:
                client.close()


class _LockedModel:
    """A LiteRT interpreter is not thread-safe; the dashboard's server threads share one through this.

    Photos are answered by the `analyze` settings' model role (accurate by default) with its test-time
    augmentation: a photo is one call, so accuracy matters more than faces/s.
    """

    def __init__(self, model, role: str, tta: str = "none") -> None:
        self._model = model
        self.role = role
        self.tta = tta
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._model.version

    @property
    def preprocess(self):
        return self._model.preprocess

    def predict(self, crops):
        with self._lock:
            return self._model.predict_tta(crops, self.tta)
