"""Model registry subcommands: emotion models list | promote VERSION | rollback."""

from __future__ import annotations

import argparse
import json

from shared.registry import ROLES


def _registry(role: str = "fast", required_redis: bool = True, wait_s: float = 5.0):
    """The registry of one role, with its Redis: the current-model pointers live there, so without Redis
    no command could tell the truth about what is served (RedisUnavailable, exit 2). Only copying a
    model into the registry (`ship --register`) may go without."""
    from shared.bootstrap import redis_from, registry_from
    from shared.redis_conn import RedisUnavailable
    from shared.settings import Settings

    settings = Settings()
    try:
        client = redis_from(settings, wait_s=wait_s if required_redis else 1.0)
    except RedisUnavailable:
        if required_redis:
            raise
        client = None
    return registry_from(settings, client, role)


def _row(name: str, meta, served: str) -> dict:
    public = meta.metrics.get("PublicTest") or {}
    return {"version": name, "current": name == served, "architecture": meta.architecture,
            "created": getattr(meta, "created", None), "params": getattr(meta, "params", None),
            "top1": public.get("top1"), "top1_tta": public.get("top1_tta"), "macro_f1": public.get("macro_f1")}


def cmd_list(args) -> int:
    """Every version (and the shipped default), the fast role's served one starred, and what each role serves."""
    from shared.model_runtime import ModelError
    from shared.registry import DEFAULT_VERSION

    registry = _registry("fast")
    serving = {}
    for role in ROLES:
        view = registry if role == "fast" else _registry(role)
        try:
            serving[role] = {"version": view.served_version(), "dir": str(view.current_dir())}
        except ModelError as exc:  # nothing to serve for this role: say so, the listing still stands
            serving[role] = {"version": None, "dir": None, "error": str(exc)}
    served = serving["fast"]["version"]
    rows = [_row(meta.version, meta, served) for meta in registry.versions()]
    default = registry.default_model()
    if default is not None:
        rows.append(_row(DEFAULT_VERSION, default, served))
    if args.json:
        print(json.dumps({"current": registry.current_version(), "serving": serving, "registry": str(registry.root),
                          "versions": rows}))
        return 0
    for role, what in (("fast", "live classifiers"), ("accurate", "photo and offline analysis")):
        name = serving[role]["version"]
        if name is None:
            print(f"serving ({role}, {what}): nothing: {serving[role]['error']}")
            continue
        print(f"serving ({role}, {what}): {name} ({serving[role]['dir']})"
              + (": no version promoted, the shipped default" if name == DEFAULT_VERSION else ""))
    if not rows:
        print(f"no models in {registry.root}")
        return 0
    print(f"{'':2}{'version':32} {'architecture':12} {'PublicTest top-1':>16} {'macro F1':>8}  created")
    for row in rows:
        top1 = f"{row['top1']:.2%}" if row["top1"] is not None else "-"
        f1 = f"{row['macro_f1']:.3f}" if row["macro_f1"] is not None else "-"
        print(f"{'*' if row['current'] else ' ':2}{row['version']:32} {row['architecture']:12} {top1:>16} {f1:>8}  "
              f"{row['created'] or '-'}")
    return 0


def cmd_promote(args) -> int:
    registry = _registry(args.role)
    previous = registry.current_version()
    registry.promote(args.version)
    print(f"promoted {args.version}" + (f" (previous: {previous})" if previous else ""))
    return 0


def cmd_rollback(args) -> int:
    registry = _registry(args.role)
    version = registry.rollback()
    print(f"rolled back to {version}")
    return 0


def cmd_ship(args) -> int:
    """Export a training campaign's best epoch as a model directory (and optionally register/promote it)."""
    from pathlib import Path

    from trainer.ship import ship_campaign

    out = ship_campaign(Path(args.run_dir), Path(args.to), version=args.version, require_face=args.require_face,
                        also=[Path(d) for d in args.also])
    from shared.model_runtime import read_metadata

    meta = read_metadata(out)
    summary = {"version": meta.version, "model_dir": str(out), "metrics": meta.metrics}
    if args.register:
        registry = _registry(args.role, required_redis=args.promote)
        summary["registered"] = registry.register(out)
        if args.promote:
            registry.promote(meta.version)
            summary["promoted"] = args.role
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, promote or roll back registered models")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="registered versions and the shipped default; the one served starred")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_list)
    q = actions.add_parser("promote", help="make VERSION the current model of a role (fast: the live classifiers)")
    q.add_argument("version", help="a version of `emotion models list` (or `default`, the shipped model)")
    q.add_argument("--role", choices=ROLES, default="fast", help="model role (default fast)")
    q.set_defaults(func=cmd_promote)
    q = actions.add_parser("rollback", help="return a role to its previously current version")
    q.add_argument("--role", choices=ROLES, default="fast", help="model role (default fast)")
    q.set_defaults(func=cmd_rollback)
    q = actions.add_parser("ship", help="export a training campaign's best epoch as an evaluated model directory")
    q.add_argument("run_dir", help="campaign directory, e.g. models/accurate-v1")
    q.add_argument("--to", required=True, help="model directory to write, e.g. models/accurate")
    q.add_argument("--version", default=None, help="version name (default <campaign>-e<best epoch>)")
    q.add_argument("--require-face", action="store_true",
                   help="also score the face-filtered PublicTest (images where the detector finds a face)")
    q.add_argument("--with", dest="also", action="append", default=[], metavar="RUN_DIR",
                   help="another campaign whose best network joins an ensemble (probabilities averaged in one "
                        "exported graph); repeatable")
    q.add_argument("--register", action="store_true", help="copy it into the registry")
    q.add_argument("--promote", action="store_true", help="with --register: make it current for --role")
    q.add_argument("--role", choices=ROLES, default="accurate", help="role to promote it for (default accurate)")
    q.set_defaults(func=cmd_ship)
