"""`emotion analyze PATH...`: video files, images, folders or globs through the platform's own
detector, model and smoothing, as fast as the machine allows (analysis/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emotion.arguments import at_least_one
from emotion.errors import UserError


def cmd_analyze(args) -> int:
    from analysis.inputs import InputError
    from analysis.run import AnalyzeError, AnalyzeRequest, analyze
    from shared.model_runtime import ModelError
    from shared.session import new_session_id
    from shared.settings import Settings

    settings = Settings(**({"database_url": args.database_url} if args.database_url else {}))
    request = AnalyzeRequest(paths=args.paths, out=args.out, annotate=args.annotate, every=args.every,
                             model_role=args.model, store=args.store, session_id=new_session_id())
    try:
        summary = analyze(settings, request)
    except (AnalyzeError, InputError, ModelError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:  # an output that cannot be written (disk full, permissions)
        raise UserError(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}") from None
    if args.json:
        print(summary.model_dump_json())
    else:
        print(json.dumps(summary.model_dump(), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyse video files, images, folders or globs at full speed: rows per face, "
                                       "an annotated copy with a report, or a stored session")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a video file, an image, a folder (its videos and images) or a glob (quote it)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="one row per face per frame: FILE.csv, FILE.jsonl or FILE.parquet (format from the suffix)")
    p.add_argument("--annotate", type=Path, default=None, metavar="OUT",
                   help="OUT.mp4 (.avi, .mkv, .mov): the video with boxes, track ids and labels drawn; any other OUT "
                        "is a folder for every annotated video and image; the report (HTML and PNG charts) goes next "
                        "to it")
    p.add_argument("--every", type=at_least_one, default=1, metavar="N",
                   help="analyse every Nth frame of each video (default 1: every frame)")
    p.add_argument("--model", choices=("fast", "accurate"), default=None,
                   help="model role (default EMOTION_ANALYZE__MODEL_ROLE, accurate; the fast model answers while no "
                        "accurate one is installed)")
    p.add_argument("--store", action="store_true",
                   help="record the results as a session of the event store (the dashboard's Sessions page)")
    p.add_argument("--database-url", default=None,
                   help="event store for --store (default EMOTION_DATABASE_URL / DATABASE_URL, else sqlite)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.set_defaults(func=cmd_analyze)
