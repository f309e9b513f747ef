"""Training subcommands: train (foreground or queued), worker, evaluate, job status/cancel."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from emotion.errors import UserError
from shared.settings import REPO_ROOT

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "fer2013"


def _settings():
    from shared.settings import Settings

    return Settings()


def _queue(settings, wait_s: float = 5.0):
    """A client of the training queue's Redis (single-node: EMOTION_QUEUE_REDIS_URL with a cluster)."""
    from shared.bootstrap import queue_redis_from

    return queue_redis_from(settings, wait_s=wait_s)


def _connect(settings, required: bool = True, wait_s: float = 5.0):
    """A Redis client; with required=False, None when Redis is down (read-only commands fall back to files)."""
    from shared.bootstrap import redis_from
    from shared.redis_conn import RedisUnavailable

    try:
        return redis_from(settings, wait_s=wait_s)
    except RedisUnavailable:
        if required:
            raise
        return None


def _data_path(value: str | None) -> Path:

    if value:
        return Path(value).expanduser()
    if DEFAULT_DATA.exists():
        return DEFAULT_DATA
    raise UserError(f"no dataset at the default location {DEFAULT_DATA}; pass --data PATH "
                    "(fer2013.csv, train/ test/ image folders, or .npz archives)")


def _train_config(args):
    from shared.training import TrainConfig

    fields = {"data": _data_path(args.data), "extra": [Path(p).expanduser() for p in args.extra or []],
              "ferplus": Path(args.ferplus).expanduser() if args.ferplus else None,
              "fer_weight": args.fer_weight, "require_face": args.require_face, "model": args.model,
              "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
              "init_from": Path(args.init_from).expanduser() if args.init_from else None,
              "run_dir": Path(args.run_dir).expanduser() if args.run_dir else None,
              "promote": args.promote, "max_images": args.max_images}
    return TrainConfig(**{k: v for k, v in fields.items() if v is not None})


def cmd_campaign(args) -> int:
    """`emotion train --recipe NAME --run-dir DIR` starts a campaign; `--resume DIR` continues one."""
    import shlex

    from trainer.data import DatasetError
    from trainer.recipes import RECIPES, CampaignState

    run_dir = Path(args.resume or args.run_dir or f"models/{args.recipe}-v1").expanduser()
    try:
        if args.resume is None:
            from trainer.campaign import CampaignError, start_campaign

            recipe = RECIPES[args.recipe]
            if args.epochs_total:
                recipe = recipe.model_copy(update={"cycles": [args.epochs_total]})
            # Kept relative to the repository, so the campaign continues on another machine's checkout.
            data = os.path.relpath(Path(args.data).expanduser().resolve() if args.data else DEFAULT_DATA, REPO_ROOT)
            start_campaign(run_dir, recipe, data, ferplus=args.ferplus)
        from trainer.campaign import CampaignError, train_epochs

        command = shlex.join(["emotion", "train", "--resume", str(run_dir)]
                             + (["--epochs", str(args.epochs)] if args.epochs is not None else [])
                             + (["--hours", str(args.hours)] if args.hours else []))
        state = train_epochs(run_dir, max_epochs=args.epochs, command=command,
                             stop_after_s=args.hours * 3600 if args.hours else None)
    except (DatasetError, CampaignError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(json.dumps({"run_dir": str(run_dir), "epochs_done": state.epochs_done,
                      "total_epochs": state.recipe.total_epochs, "best_epoch": state.best_epoch,
                      "best_val_top1": state.best_val_top1, "finished": state.finished}))
    return 0


def cmd_train(args) -> int:

    if args.resume or args.recipe:
        return cmd_campaign(args)
    from shared.bootstrap import registry_from
    from trainer.data import DatasetError
    from trainer.jobs import enqueue_training, train_and_register

    cfg = _train_config(args)
    settings = _settings()
    if args.enqueue:
        from shared.training import DatasetPathError

        try:
            job = enqueue_training(_queue(settings), cfg, settings, version=args.version)
        except DatasetPathError as exc:
            raise UserError(str(exc)) from None
        print(f"queued training job {job.id} on queue '{job.origin}' (run `emotion worker` to process it; "
              f"`emotion job status {job.id}` shows progress)", file=sys.stderr)
        print(job.id)
        return 0
    # Promotion writes the current-model pointer and its history to Redis: check it before hours of training.
    client = _connect(settings, required=cfg.promote != "never")
    registry = registry_from(settings, client)
    try:
        summary = train_and_register(cfg, registry, version=args.version, verbose=1)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    metrics = summary["metrics"]
    print(f"model {summary['version']} registered in {settings.registry_dir}: PublicTest top-1 {metrics['top1']:.2%} "
          f"(flip TTA {metrics.get('top1_tta', float('nan')):.2%}), macro F1 {metrics['macro_f1']:.3f}; "
          f"{'promoted' if summary['promoted'] else 'not promoted'} ({summary['reason']})", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def cmd_worker(args) -> int:
    from shared.bootstrap import configure_logging
    from shared.streams import Keys
    from trainer.jobs import run_worker

    settings = _settings()
    if args.check_config:
        print(json.dumps({"ok": True, "command": "worker"}))
        return 0
    configure_logging(settings)
    run_worker(_queue(settings, wait_s=10.0), Keys.of(settings), burst=args.burst)
    return 0


def _pick_split(path: Path, name: str | None):
    from trainer.data import DatasetError, canonical_split, load_dataset

    try:
        splits = load_dataset(path)
        wanted = canonical_split(name) if name else None
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    if wanted and wanted in splits:
        return splits[wanted]
    if len(splits) == 1 and (wanted is None or path.is_file()):
        split = next(iter(splits.values()))
        if wanted and split.name not in (wanted, "Unknown"):
            # A file of one known split is never relabelled: scores of PublicTest called "Training" mislead.
            raise UserError(f"{path} holds the {split.name} split, not {wanted}: drop --split, or pass the file "
                            f"or folder that has {wanted}")
        split.name = wanted or (split.name if split.name != "Unknown" else path.stem)
        return split
    if wanted is None and "PublicTest" in splits:
        return splits["PublicTest"]
    raise UserError(f"{path}: split {wanted or '(none given)'} not found; available: {', '.join(sorted(splits))} "
                    "(choose with --split)")


def resolve_evaluated_model(settings, name: str | None) -> Path:
    """`--model`: a role (fast, accurate), a model directory, or a registry version (default: the fast role)."""
    from shared.bootstrap import registry_from
    from shared.registry import ROLES
    from trainer.evaluate import resolve_model_dir

    if name is None or name in ROLES:
        client = _connect(settings, False, 1.0)
        return registry_from(settings, client, name or "fast").current_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    return resolve_model_dir(name, registry_from(settings, _connect(settings, False, 1.0)))


def cmd_evaluate(args) -> int:
    from trainer.evaluate import evaluate, markdown_per_class, markdown_summary

    settings = _settings()
    model_dir = resolve_evaluated_model(settings, args.model)
    split = _pick_split(Path(args.data).expanduser(), args.split)
    if args.require_face:
        from trainer.cleaning import drop_faceless

        name = split.name
        split = drop_faceless(split)
        split.name = f"{name}-faces"
    result = evaluate(model_dir, split, tta=not args.no_tta)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {result['model_version']} ({model_dir}) on {split.name}:")
    print(markdown_summary({split.name: result}))
    print()
    best = result.get("ten_crop") or result.get("tta") or result
    label = "ten-crop TTA" if result.get("ten_crop") else "flip TTA" if result.get("tta") else ""
    print(markdown_per_class(best) + (f"\n(per class: with {label})" if label else ""))
    if result.get("throughput"):
        print(f"\nthroughput: {result['throughput']['faces_per_s']:.0f} faces/s "
              f"(1 thread, batch {result['throughput']['batch']})")
    return 0


def cmd_job(args) -> int:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from trainer.jobs import cancel_training, serializer

    client = _queue(_settings())
    if args.action == "cancel":
        try:
            print(cancel_training(client, args.job_id))
        except NoSuchJobError:
            raise UserError(f"no training job {args.job_id}") from None
        return 0
    try:
        job = Job.fetch(args.job_id, connection=client, serializer=serializer())
    except NoSuchJobError:
        raise UserError(f"no training job {args.job_id}") from None
    status = {"id": job.id, "status": str(job.get_status().value), "meta": job.get_meta(),
              "enqueued_at": str(job.enqueued_at), "ended_at": str(job.ended_at)}
    if status["status"] == "finished":
        status["result"] = job.return_value()
    if status["status"] == "failed":
        latest = job.latest_result()
        status["error"] = latest.exc_string if latest else None
    print(json.dumps(status, default=str))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from shared.training import MODEL_NAMES
    from trainer.recipes import RECIPES

    p = sub.add_parser("train", help="train a model, then export, evaluate, register and (maybe) promote it")
    p.add_argument("--data", default=None, help=f"FER-2013: fer2013.csv, train/ test/ folders or .npz (default {DEFAULT_DATA})")
    p.add_argument("--extra", action="append", help="extra dataset laid out <emotion>/<images> (repeatable)")
    p.add_argument("--ferplus", default=None, help="FER+ votes: aligned .npz (or folder) or fer2013new.csv")
    p.add_argument("--fer-weight", type=float, default=None, help="weight of the FER label vs FER+ votes (0..1)")
    p.add_argument("--require-face", action="store_true", default=None,
                   help="drop training images where the face detector finds no face")
    p.add_argument("--model", default=None, choices=MODEL_NAMES, help="architecture (default compact)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default 60); with --recipe/--resume: at most this many in this sitting")
    p.add_argument("--batch-size", type=int, default=None, help="images per training step (default 128)")
    p.add_argument("--learning-rate", type=float, default=None, help="peak learning rate of the cosine schedule")
    p.add_argument("--init-from", default=None,
                   help="start from this model's weights (a .keras file or a model directory): fine-tuning")
    p.add_argument("--run-dir", default=None, help="checkpoints and logs (an existing run resumes)")
    p.add_argument("--promote", default=None, choices=("never", "if-better", "always"),
                   help="make the new model current (default if-better: only if it beats the current on PublicTest)")
    p.add_argument("--max-images", type=int, default=None, help="subsample Training (quick runs)")
    p.add_argument("--version", default=None, help="registry version name (default <model>-<UTC time>)")
    p.add_argument("--enqueue", action="store_true", help="queue the run for `emotion worker` and print the job id")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="start a resumable campaign with a long recipe (state in --run-dir, default models/<recipe>-v1)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the campaign kept in RUN_DIR")
    p.add_argument("--hours", type=float, default=None, help="campaigns: stop at the first epoch end after this long")
    p.add_argument("--epochs-total", type=int, default=None,
                   help="--recipe: one cosine cycle of this many epochs instead of the recipe's cycles (tiny runs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("worker", help="run the RQ training worker (queue '<prefix>:training')")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--check-config", action="store_true", help="validate settings and exit")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("evaluate", help="score an exported model on a dataset split (LiteRT, as served)")
    p.add_argument("--model", default=None,
                   help="fast or accurate (that role's current model), a registry version or a model directory "
                        "(default: fast)")
    p.add_argument("--data", required=True, help="dataset: .npz, folder of .npz, fer2013.csv or image folders")
    p.add_argument("--split", default=None, help="Training, PublicTest or PrivateTest (default PublicTest)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-tta", action="store_true", help="skip the test-time-augmentation scores")
    p.add_argument("--require-face", action="store_true",
                   help="score only images where the face detector finds a face (the original project's protocol)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("job", help="status or cancellation of a queued training job")
    p.add_argument("action", choices=("status", "cancel"), help="status (JSON) or cancel (a queued or running job)")
    p.add_argument("job_id", help="the id `emotion train --enqueue` printed")
    p.set_defaults(func=cmd_job)
