"""`emotion bench ...`: measure the classifier, the detector, the whole pipeline, scaling, training and
offline analysis (against the fer package).

Each subcommand parses its flags and calls one `bench.*` entry point; with --json the last stdout
line is one JSON object (the table goes to stderr). Results and targets: bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from emotion.arguments import at_least_one
from emotion.errors import UserError


def _bench(module: str):
    """Import `bench.<module>`; the suite lives in the source checkout beside `shared/`."""
    from shared.settings import REPO_ROOT

    try:
        return importlib.import_module(f"bench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", f"bench.{module}"):
            raise
    if not (REPO_ROOT / "bench" / f"{module}.py").is_file():
        raise UserError(f"the benchmark suite (bench/{module}.py) is not in this installation; run it from a "
                        f"source checkout of the repository")
    sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(f"bench.{module}")


def _list(kind=int):
    def checked(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
        return values

    return checked


def _settings():
    from shared.settings import Settings

    return Settings()


def _client(settings):
    from shared.bootstrap import redis_from

    return redis_from(settings, wait_s=5.0)


def _emit(module, result: dict, args) -> int:
    from bench.common import emit

    from bench.common import run_info

    result["run"] = run_info()
    emit(result, module.table(result), args.json)
    return 0


def cmd_classifier(args) -> int:
    module = _bench("classifier_bench")
    settings = _settings()
    result = module.run_classifier_bench(settings, _client(settings), batch_sizes=args.batch_sizes,
                                         threads=args.threads, faces=args.faces, repeats=args.repeats,
                                         fer_path=args.fer)
    return _emit(module, result, args)


def cmd_detector(args) -> int:
    module = _bench("detector_bench")
    result = module.run_detector_bench(_settings(), frames=args.frames, repeats=args.repeats,
                                       recall_faces=args.recall_faces, fer_path=args.fer)
    return _emit(module, result, args)


def cmd_pipeline(args) -> int:
    module = _bench("pipeline_bench")
    settings = _settings()
    result = module.run_pipeline_bench(settings, _client(settings), cameras=args.cameras, fps=args.fps,
                                       duration_s=args.duration, warmup_s=args.warmup, classifiers=args.classifiers,
                                       detectors=args.detectors, sweep_fps=[] if args.no_sweep else args.sweep_fps,
                                       sweep_cameras=args.sweep_cameras, source=args.source)
    _emit(module, result, args)
    return 0 if result["lost"] == 0 else 1


def cmd_scaling(args) -> int:
    settings = _settings()
    if args.shards:
        module = _bench("shard_scaling_bench")
        result = module.run_shard_scaling_bench(settings, _client(settings), shards=args.shards,
                                                replicas=args.replicas, frames_per_shard=args.frames,
                                                repeats=args.repeats)
        return _emit(module, result, args)
    module = _bench("scaling_bench")
    result = module.run_scaling_bench(settings, _client(settings), replicas=args.replicas, faces=args.faces,
                                      repeats=args.repeats, fer_path=args.fer)
    return _emit(module, result, args)


def cmd_training(args) -> int:
    module = _bench("training_bench")
    result = module.run_training_bench(_settings(), models=args.models, images=args.images, data=args.data,
                                       batch_size=args.batch_size)
    return _emit(module, result, args)


def cmd_analyze(args) -> int:
    module = _bench("analyze_bench")
    result = module.run_analyze_bench(args.video, args.fer_python, not args.plain, args.repeats)
    return _emit(module, result, args)


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: classifier, detector, pipeline, scaling, training, analyze")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    fer_help = "FER-2013 archive for real faces (default ../shared/data/fer2013/...; demo crops when absent)"

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object on the last stdout line")

    p = kinds.add_parser("classifier", help="faces/s of one classifier replica (service loop vs bare runtime)")
    p.add_argument("--batch-sizes", type=_list(), default=[1, 8, 16, 32, 64], help="comma list (default 1,8,16,32,64)")
    p.add_argument("--threads", type=_list(), default=[1, 2], help="comma list of inference threads (default 1,2)")
    p.add_argument("--faces", type=at_least_one, default=2000, help="faces pre-filled per run (default 2000)")
    p.add_argument("--repeats", type=at_least_one, default=3, help="runs per configuration; the median is reported")
    p.add_argument("--fer", type=Path, default=None, help=fer_help)
    common(p)
    p.set_defaults(func=cmd_classifier)

    p = kinds.add_parser("detector", help="frames/s of FaceFinder on one core at 640x480 and 1280x720, and recall")
    p.add_argument("--frames", type=at_least_one, default=60, help="frames per resolution per run (default 60)")
    p.add_argument("--repeats", type=at_least_one, default=3, help="runs per configuration; the median is reported")
    p.add_argument("--recall-faces", type=int, default=600,
                   help="FER-2013 PublicTest faces composed into frames for recall (0 skips; default 600)")
    p.add_argument("--fer", type=Path, default=None, help=fer_help)
    common(p)
    p.set_defaults(func=cmd_detector)

    p = kinds.add_parser("pipeline", help="end-to-end latency of `emotion up` per camera count, and an fps sweep")
    p.add_argument("--cameras", type=_list(), default=[1, 2, 4], help="comma list of camera counts (default 1,2,4)")
    p.add_argument("--fps", type=float, default=15.0, help="frames per second per camera (default 15)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of capture per run (default 15)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds at the start of each run left out of the steady-state numbers (default 3)")
    p.add_argument("--classifiers", type=at_least_one, default=1, help="classifier replicas (default 1)")
    p.add_argument("--detectors", type=at_least_one, default=1,
                   help="detector replicas, the frames split by camera into as many shards (default 1)")
    p.add_argument("--source", default="demo", help="source of every camera (default demo)")
    p.add_argument("--sweep-fps", type=_list(float), default=[15.0, 20.0, 30.0],
                   help="fps values tried for the highest sustained fps (default 15,20,30)")
    p.add_argument("--sweep-cameras", type=at_least_one, default=2, help="cameras during the fps sweep (default 2)")
    p.add_argument("--no-sweep", action="store_true", help="skip the fps sweep")
    common(p)
    p.set_defaults(func=cmd_pipeline)

    p = kinds.add_parser("scaling", help="drain time of a pre-filled faces stream with 1 vs 2 classifier processes; "
                                         "with --shards, of N shards of frames through R detectors + R classifiers")
    p.add_argument("--replicas", type=_list(), default=[1, 2], help="comma list of replica counts (default 1,2)")
    p.add_argument("--faces", type=at_least_one, default=4000, help="faces pre-filled per run (default 4000)")
    p.add_argument("--shards", type=at_least_one, default=None,
                   help="drive this many shards with synthetic frames through R detector and R classifier processes "
                        "per replica count R (the whole stream pipeline, not the classifier alone)")
    p.add_argument("--frames", type=at_least_one, default=120,
                   help="with --shards: demo frames per shard per run (default 120, at most 250)")
    p.add_argument("--repeats", type=at_least_one, default=3, help="runs per configuration; the median is reported")
    p.add_argument("--fer", type=Path, default=None, help=fer_help)
    common(p)
    p.set_defaults(func=cmd_scaling)

    p = kinds.add_parser("training", help="seconds per training epoch per architecture (needs TensorFlow)")
    p.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=["compact", "baseline"],
                   help="comma list of trainer.models names (default compact,baseline)")
    p.add_argument("--images", type=at_least_one, default=1024, help="training images in the timed subset (default 1024)")
    p.add_argument("--batch-size", type=at_least_one, default=128, help="training batch size (default 128)")
    p.add_argument("--data", type=Path, default=None, help="FER-2013 training archive (default ../shared/...)")
    common(p)
    p.set_defaults(func=cmd_training)

    p = kinds.add_parser("analyze", help="emotion analyze against the fer package on the same video, same run")
    analyze_arguments(p)
    p.set_defaults(func=cmd_analyze)


def analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the analyze benchmark (also `python -m bench.analyze_bench`'s)."""
    parser.add_argument("--video", type=Path, default=None,
                        help="the video both tools analyse (default Debian opencv-doc's examples/data/Megamind.avi)")
    parser.add_argument("--fer-python", default=None,
                        help="python of a virtualenv with fer installed (default $FER_PYTHON; fer is skipped without)")
    parser.add_argument("--plain", action="store_true", help="rows only: no annotated video on either side")
    parser.add_argument("--repeats", type=at_least_one, default=1, help="runs of each tool; the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last stdout line")
