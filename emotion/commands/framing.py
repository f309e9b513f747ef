"""`emotion calibrate-framing MODEL_DIR`: fit how each detector backend must crop for a model, from data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emotion.errors import UserError
from shared.settings import REPO_ROOT

FER_TRAINING = REPO_ROOT.parent / "shared" / "data" / "fer2013" / "fer2013_training.npz"


def cmd_calibrate(args) -> int:
    import numpy as np

    from shared.faces import BACKENDS, make_detector
    from shared.model_runtime import read_metadata
    from shared.settings import Settings
    from trainer.framing import apply_to_model, calibrate

    read_metadata(args.model_dir)  # a ModelError (one line) before minutes of detection
    if not args.data.is_file():
        raise UserError(f"{args.data}: no FER-2013 archive (.npz with 'images'); pass --data")
    images = np.load(args.data, allow_pickle=False)["images"]
    order = np.random.default_rng(args.seed).permutation(len(images))[:args.faces]
    settings = Settings().detector
    framings, reports = {}, []
    for backend in args.backends:
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
        detector = make_detector(settings.model_copy(update={"backend": backend}))
        if detector.name != backend:
            print(f"calibrate-framing: {backend} is not installed here; skipped", file=sys.stderr)
            continue
        framing, report = calibrate(images[order], detector, seed=args.seed)
        framings[backend], report["framing"] = framing, framing.model_dump()
        reports.append(report)
        print(f"{backend}: {report['found']} of {report['faces']} faces found; {framing.model_dump()}",
              file=sys.stderr if args.json else sys.stdout)
    if not framings:
        raise UserError("no detector backend could be calibrated")
    preprocess = apply_to_model(args.model_dir, framings, reports, f"{args.data.name}: {len(order)} faces, "
                                                                    f"seed {args.seed}")
    if args.json:
        print(json.dumps({"model_dir": str(args.model_dir), "preprocess": preprocess, "calibration": reports}))
    return 0


def _backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one backend")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-framing", help="fit each detector backend's crop framing for a model, from "
                                                 "FER-2013 Training faces placed into larger frames")
    p.add_argument("model_dir", type=Path, help="model directory (metadata.json is updated in place)")
    p.add_argument("--data", type=Path, default=FER_TRAINING, help=f"FER-2013 archive (default {FER_TRAINING})")
    p.add_argument("--faces", type=int, default=2000, help="faces to fit on (default 2000)")
    p.add_argument("--backends", type=_backends, default=["yunet", "haar"], help="comma list (default yunet,haar)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of faces (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last stdout line")
    p.set_defaults(func=cmd_calibrate)
