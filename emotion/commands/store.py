"""Event-store subcommands: export, db upgrade / db current (the recorder is a service: services.py)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from emotion.errors import UserError


DATABASE_URL_HELP = "SQLAlchemy URL of the event store (default: EMOTION_DATABASE_URL / DATABASE_URL, else sqlite)"


def _settings(args):
    from shared.settings import Settings

    return Settings(**({"database_url": args.database_url} if args.database_url else {}))


def parse_time(text: str, *, end: bool = False) -> datetime:
    """An ISO datetime (naive = UTC) or a date; a date as the end of a range means the end of that day."""

    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            value = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return value + timedelta(days=1) if end else value
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"not a date or ISO datetime: {text!r} (e.g. 2025-01-31 or 2025-01-31T12:00:00Z)") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _store_error(exc: Exception, url: str):
    from shared.store import describe_db_error, redact_url

    described = describe_db_error(exc)
    hint = " (run `emotion db upgrade` first?)" if "no such table" in described or "does not exist" in described else ""
    return UserError(f"event store {redact_url(url)}: {described}{hint}")


def cmd_export(args) -> int:
    import sqlalchemy as sa

    from shared.store import check_url, make_engine, queries

    settings = _settings(args)
    check_url(settings.database_url)
    start, end = parse_time(args.start), parse_time(args.end, end=True)
    if end <= start:
        raise UserError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    to_stdout = args.output == "-"
    if args.output is None:
        output = Path(f"emotion-events-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.{args.format}")
    else:
        output = None if to_stdout else Path(args.output)
    if output is not None and not output.parent.exists():
        raise UserError(f"output folder {output.parent} does not exist")
    engine = make_engine(settings.database_url)
    try:
        rows = _write_export(queries.iter_events(engine, start, end, args.camera), args.format, output)
    except sa.exc.SQLAlchemyError as exc:
        raise _store_error(exc, settings.database_url) from None
    finally:
        engine.dispose()
    summary = {"rows": rows, "format": args.format, "output": "-" if output is None else str(output),
               "from": start.isoformat(), "to": end.isoformat(), "camera": args.camera}
    print(json.dumps(summary), file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _write_export(chunks, fmt: str, output: Path | None) -> int:
    """Stream the chunks to CSV (header once) or Parquet (one row group per chunk)."""
    import pandas as pd

    from shared.store.queries import EVENT_COLUMNS

    rows = 0
    if fmt == "csv":
        sink = sys.stdout if output is None else open(output, "w", newline="", encoding="utf-8")
        try:
            header = True
            for chunk in chunks:
                chunk.to_csv(sink, index=False, header=header, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
                header, rows = False, rows + len(chunk)
            if header:
                pd.DataFrame(columns=EVENT_COLUMNS).to_csv(sink, index=False)
        finally:
            if output is not None:
                sink.close()
        return rows
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    target = output if output is not None else sys.stdout.buffer
    try:
        for chunk in chunks:
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema)
            writer.write_table(table.cast(writer.schema))
            rows += len(chunk)
        if writer is None:  # an empty range still gives a file with the columns
            pq.write_table(pa.Table.from_pandas(_empty_events_frame(), preserve_index=False), target)
    finally:
        if writer is not None:
            writer.close()
    return rows


def _empty_events_frame():
    import pandas as pd

    from shared.store.schema import events

    types = {"DateTime": "datetime64[ns, UTC]", "String": "object", "Float": "float64"}
    return pd.DataFrame({c.name: pd.Series(dtype=types.get(type(c.type).__name__, "int64"))
                         for c in events.columns if c.name != "id"})


def cmd_db(args) -> int:
    import sqlalchemy as sa

    from shared.store import check_url, current_revision, head_revision, make_engine, migrate, redact_url

    settings = _settings(args)
    check_url(settings.database_url)
    try:
        if args.db_command == "upgrade":
            revision = migrate(settings.database_url)
        else:
            engine = make_engine(settings.database_url)
            try:
                revision = current_revision(engine)
            finally:
                engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        raise _store_error(exc, settings.database_url) from None
    print(json.dumps({"ok": True, "database": redact_url(settings.database_url), "revision": revision,
                      "head": head_revision()}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export recorded events of a time range as CSV or Parquet")
    p.add_argument("--from", dest="start", required=True, help="start (UTC): ISO datetime or date")
    p.add_argument("--to", dest="end", required=True, help="end (UTC, exclusive): ISO datetime, or a date for the "
                                                           "end of that day")
    p.add_argument("--camera", default=None, help="only this camera")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="csv (default) or parquet")
    p.add_argument("--output", default=None, help="file to write ('-' for stdout; default "
                                                  "emotion-events-<from>-<to>.<format>)")
    p.add_argument("--database-url", default=None, help=DATABASE_URL_HELP)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("db", help="event store schema (Alembic migrations)")
    db_sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, text in (("upgrade", "upgrade the schema to the newest revision"),
                       ("current", "print the schema revision of the store")):
        q = db_sub.add_parser(name, help=text)
        q.add_argument("--database-url", default=None, help=DATABASE_URL_HELP)
        q.set_defaults(func=cmd_db)
