"""Engines and schema migrations of the event store.

`make_engine(url)` tunes each backend for a recorder writing while a dashboard reads:
SQLite gets WAL (readers never block the writer), a busy timeout and NORMAL sync; PostgreSQL gets
pool_pre_ping (a connection broken while the server was away is replaced, not used), short connect
timeouts, TCP keepalives and a UTC session time zone. `migrate(url)` upgrades to the Alembic head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from shared.errors import StartupError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent `migrate` calls.
MIGRATION_LOCK_ID = 0x656D6F74  # "emot"


class StoreUnavailable(RuntimeError):
    """The database did not answer (the message names the URL without its password)."""


def check_url(url: str) -> None:
    """Refuse, with one readable line, a URL that is malformed or names a backend we do not support."""
    try:
        backend = make_url(normalize_url(url)).get_backend_name()
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError for a malformed URL
        raise StartupError(f"invalid database URL: {exc}") from None
    if backend not in ("sqlite", "postgresql"):
        raise StartupError(f"the event store supports sqlite:/// and postgresql:// URLs, not {backend}")


def normalize_url(url: str) -> str:
    """postgres:// and postgresql:// (as platforms set DATABASE_URL) use psycopg 3, the driver we ship."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def redact_url(url: str) -> str:
    try:
        return make_url(normalize_url(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as its scheme only
        return url.split("://", 1)[0] + "://…"


def make_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, connect_timeout_s: int = 5,
                echo: bool = False) -> Engine:
    """An engine for a SQLite file (or sqlite:// in memory) or a PostgreSQL URL."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:")
        engine = sa.create_engine(parsed, echo=echo,
                                  connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
                                  **({"poolclass": StaticPool} if in_memory else {}))

        @sa_event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": connect_timeout_s, "options": "-c timezone=UTC",
                        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
        return sa.create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5,
                                pool_recycle=1800, connect_args=connect_args)
    return sa.create_engine(parsed, echo=echo, pool_pre_ping=True)


def alembic_config(connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(database_url: str | Engine, revision: str = "head") -> str:
    """Upgrade the store at `database_url` (or an Engine) to `revision`; returns the revision reached.

    Safe to call at every start: at head it does nothing. On PostgreSQL an advisory lock makes
    concurrent callers (two recorder replicas) wait for each other instead of racing.
    """
    if logging.getLogger("alembic").level == logging.NOTSET:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines are noise; we log our own
    from alembic import command

    engine = database_url if isinstance(database_url, Engine) else make_engine(database_url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
                conn.commit()
            try:
                from alembic.runtime.migration import MigrationContext

                before = MigrationContext.configure(conn).get_current_revision()
                command.upgrade(alembic_config(conn), revision)
                conn.commit()
                after = MigrationContext.configure(conn).get_current_revision()
                if after != before:
                    log.info("event=store_migrated url=%s from=%s to=%s", redact_url(str(engine.url)), before, after)
            finally:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                    conn.commit()
        return current_revision(engine) or ""
    finally:
        if not isinstance(database_url, Engine):
            engine.dispose()


# --- errors that mean "the database is away", not "this row is bad" --------------------------------

def is_unavailable(exc: BaseException) -> bool:
    """True for connection-level failures (server down, network cut, SQLite locked or disk I/O)."""
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError,
                        sa.exc.TimeoutError)):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


def describe_db_error(exc: BaseException) -> str:
    """One line for a database error, fit for a page or a terminal: the driver's own first line
    (`no such table: events`), without SQLAlchemy's `[SQL: …]` statement, parameters or links."""
    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
    first = first.split(" [SQL:", 1)[0].strip()[:300]
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {first}" if first else type(exc).__name__
