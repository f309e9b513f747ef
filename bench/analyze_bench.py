"""`emotion analyze` against the `fer` package on the same video file, in the same run.

    emotion bench analyze [--video FILE] [--fer-python PATH] [--plain] [--repeats N] [--json]
    python -m bench.analyze_bench ...          (the same)

Both tools run as subprocesses, one after the other, on the same file and do the same job:

- ours: `emotion analyze VIDEO --out rows.csv --annotate annotated.mp4 --json` (the default detector,
  the served model, rows and an annotated copy with its report);
- fer: `bench/fer_runner.py` in fer's own virtualenv (`--fer-python`, else $FER_PYTHON; without one
  fer is reported as skipped): `Video(VIDEO).analyze(FER(mtcnn=False))`, its Haar-cascade detector and
  Keras model, writing its annotated video and its CSV as it does by default.

`--plain` drops the annotated output on both sides (rows only). For each tool: frames, faces found,
frames with a face, frames/s of the analysis itself (each tool's own timer, model loading excluded),
wall time of the whole command (start-up included), and CPU seconds of the command and its children
(which load on the machine distorts less than wall time). Median of `--repeats`, tools interleaved.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import format_table, median, run_info
from shared.settings import REPO_ROOT

DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")  # Debian's opencv-doc package
FER_RUNNER = Path(__file__).resolve().parent / "fer_runner.py"
TARGET_RATIO = 5.0
TIMEOUT_S = 900


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(args: list[str], cwd: Path, env: dict | None = None) -> tuple[dict, float, float]:
    """Run a command that prints one JSON line last; (that JSON, wall seconds, CPU seconds)."""
    cpu, wall = _children_cpu_s(), time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    wall, cpu = time.perf_counter() - wall, _children_cpu_s() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} … exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    return json.loads(lines[-1]), wall, cpu


def _ours(video: Path, work: Path, annotate: bool) -> dict:
    args = [sys.executable, "-m", "emotion", "analyze", str(video), "--out", str(work / "rows.csv"), "--json"]
    if annotate:
        args += ["--annotate", str(work / "annotated.mp4")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    summary, wall, cpu = _timed(args, work, env)
    return {"frames": summary["frames"], "faces": summary["faces"],
            "frames_with_faces": summary["frames"] - summary["frames_without_faces"],
            "frames_per_s": summary["frames_per_s"], "seconds": summary["seconds"], "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "detector": summary["detector"], "model": summary["model"]["version"]}


def _fer(python: str, video: Path, work: Path, annotate: bool) -> dict:
    args = [python, str(FER_RUNNER), str(video), str(work)] + (["--annotate"] if annotate else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # fer's venv, nothing of ours
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result, wall, cpu = _timed(args, work, env)
    return {**result, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "detector": "haar (fer)", "model": "fer"}


def _median_run(runs: list[dict]) -> dict:
    if not runs:
        return {}
    picked = dict(runs[0])
    for key in ("frames_per_s", "seconds", "wall_s", "cpu_s"):
        picked[key] = round(median([r[key] for r in runs]), 2)
    picked["frames_per_cpu_s"] = round(picked["frames"] / picked["cpu_s"], 2) if picked["cpu_s"] else None
    picked["frames_per_wall_s"] = round(picked["frames"] / picked["wall_s"], 2) if picked["wall_s"] else None
    return picked


def fer_python(flag: str | None) -> str | None:
    """The fer virtualenv's interpreter from --fer-python or $FER_PYTHON, when it exists."""
    candidate = flag or os.environ.get("FER_PYTHON")
    if candidate and shutil.which(candidate):
        return shutil.which(candidate)
    return None


def run_analyze_bench(video: Path | None = None, fer: str | None = None, annotate: bool = True,
                      repeats: int = 1) -> dict:
    video = Path(video or DEFAULT_VIDEO)
    if not video.is_file():
        raise FileNotFoundError(f"no video at {video} (install Debian's opencv-doc package, or pass --video FILE)")
    python = fer_python(fer)
    ours_runs, fer_runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        for repeat in range(repeats):
            work = Path(tmp) / f"ours-{repeat}"
            work.mkdir()
            ours_runs.append(_ours(video, work, annotate))
            if python:
                work = Path(tmp) / f"fer-{repeat}"
                work.mkdir()
                fer_runs.append(_fer(python, video, work, annotate))
    ours, theirs = _median_run(ours_runs), _median_run(fer_runs)
    ratio = round(ours["frames_per_s"] / theirs["frames_per_s"], 2) if theirs else None
    return {
        "video": str(video), "annotate": annotate, "repeats": repeats, "ours": ours,
        "fer": theirs or None, "fer_skipped": None if python else
        "no fer virtualenv: pass --fer-python PATH or set FER_PYTHON (see bench/README.md)",
        "ratio_frames_per_s": ratio,
        "ratio_frames_per_cpu_s": round(ours["frames_per_cpu_s"] / theirs["frames_per_cpu_s"], 2) if theirs else None,
        "ratio_wall": round(theirs["wall_s"] / ours["wall_s"], 2) if theirs else None,
        "target_ratio": TARGET_RATIO, "target_met": None if ratio is None else ratio >= TARGET_RATIO,
        "cpus": os.cpu_count(),
    }


def table(result: dict) -> str:
    headers = ("tool", "frames", "faces", "frames with a face", "frames/s", "wall s", "CPU s", "frames/CPU s")
    rows = []
    for name in ("ours", "fer"):
        r = result.get(name)
        if r:
            rows.append((f"{name} ({r['detector']})", r["frames"], r["faces"], r["frames_with_faces"], r["frames_per_s"],
                         r["wall_s"], r["cpu_s"], r["frames_per_cpu_s"]))
    text = format_table(headers, rows)
    if result["fer"] is None:
        return text + f"\nfer skipped: {result['fer_skipped']}"
    return (text + f"\nframes/s: ours {result['ratio_frames_per_s']}x fer (target >= {TARGET_RATIO}x: "
            f"{'met' if result['target_met'] else 'not met'}); per CPU second {result['ratio_frames_per_cpu_s']}x; "
            f"whole command {result['ratio_wall']}x faster")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench.common import emit
    from emotion.commands.bench import analyze_arguments

    parser = argparse.ArgumentParser(prog="python -m bench.analyze_bench", description=__doc__.splitlines()[0])
    analyze_arguments(parser)
    args = parser.parse_args(argv)
    result = run_analyze_bench(args.video, args.fer_python, not args.plain, args.repeats)
    result["run"] = run_info(argv if argv is not None else sys.argv[1:], program="python -m bench.analyze_bench")
    emit(result, table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
