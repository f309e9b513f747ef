"""Evaluate an exported model (the LiteRT file services run, not the Keras checkpoint) on one split.

Accuracy (top-1, top-2), macro F1, per-class precision/recall/F1 and the confusion matrix, with and
without flip test-time augmentation, plus single-thread throughput. `write_report` turns results into
report.md (markdown tables) and confusion-matrix PNGs beside the model. No TensorFlow needed here.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from shared.emotions import EMOTIONS, NUM_EMOTIONS
from shared.model_runtime import EmotionModel, ModelError, TtaMode, read_metadata
from shared.registry import ModelRegistry
from trainer.data import Split

EVAL_BATCH = 256
THROUGHPUT_BATCH = 16  # the live classifier's micro-batch: the speed a replica gets
THROUGHPUT_REPEATS = 5


def resolve_model_dir(model_dir_or_version: Path | str, registry: ModelRegistry | None = None) -> Path:
    """An exported model directory, or a version name looked up in `registry`."""
    path = Path(model_dir_or_version)
    if path.is_dir():
        return path
    if registry is None:
        raise ModelError(f"{model_dir_or_version}: not a model directory (and no registry to look the version up in)")
    return registry.path(str(model_dir_or_version))


def predict_all(model: EmotionModel, images: np.ndarray, tta: bool | TtaMode, batch: int = EVAL_BATCH) -> np.ndarray:
    mode: TtaMode = "flip" if tta is True else "none" if tta is False else tta
    parts = [model.predict_tta(images[start:start + batch], mode) for start in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, NUM_EMOTIONS), np.float32)


def score(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """top1, top2, macro_f1, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    top2 = np.argsort(-probabilities, axis=1)[:, :2]
    confusion = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(NUM_EMOTIONS), where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros(NUM_EMOTIONS), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(NUM_EMOTIONS), where=denominator > 0)
    present = support > 0  # macro F1 over the classes the split contains
    n = len(labels)
    return {
        "n": n,
        "top1": float((predicted == labels).mean()) if n else 0.0,
        "top2": float((top2 == labels[:, None]).any(axis=1).mean()) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(EMOTIONS)},
        "confusion": confusion.tolist(),
    }


def throughput(model_dir: Path, images: np.ndarray, batch: int = THROUGHPUT_BATCH,
               repeats: int = THROUGHPUT_REPEATS, min_seconds: float = 0.3, tta: TtaMode = "none") -> dict:
    """Faces per second of the exported model on one thread at `batch` faces per call (median of repeats)."""
    model = EmotionModel(model_dir, threads=1)
    if len(images) == 0:
        images = np.zeros((batch, model.preprocess.input_size, model.preprocess.input_size), np.uint8)
    sample = np.resize(images, (batch, *images.shape[1:])).astype(np.uint8)

    def run() -> None:
        model.predict_tta(sample, tta)

    run()  # warm up (tensor allocation)
    calls = 1
    while True:  # calls per repeat so one repeat lasts at least min_seconds
        started = time.perf_counter()
        for _ in range(calls):
            run()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds or calls >= 4096:
            break
        calls *= 2
    rates = [calls * batch / elapsed]
    for _ in range(repeats - 1):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        rates.append(calls * batch / (time.perf_counter() - started))
    return {"faces_per_s": round(statistics.median(rates), 1), "batch": batch, "threads": 1, "repeats": repeats,
            "tta": tta}


def evaluate(model_dir_or_version: Path | str, split: Split, tta: bool = True, *,
             registry: ModelRegistry | None = None, measure_throughput: bool = True) -> dict:
    """Scores of the exported model on `split`; with `tta`, also the flip-TTA scores under "tta" and,
    for a model that sees a central window of its crop, the ten-crop scores under "ten_crop".

    The top level holds the plain scores (top1, top2, macro_f1, per_class, confusion, n) and, for
    convenience, top1_tta / top2_tta / macro_f1_tta and top1_ten_crop / top2_ten_crop / macro_f1_ten_crop.
    """
    model_dir = resolve_model_dir(model_dir_or_version, registry)
    model = EmotionModel(model_dir, threads=1)
    started = time.perf_counter()
    result = score(split.labels, predict_all(model, split.images, tta=False))
    result.update(model_version=model.version, model_dir=str(model_dir), split=split.name,
                  seconds=round(time.perf_counter() - started, 2))
    result["tta"] = None
    if tta:
        result["tta"] = score(split.labels, predict_all(model, split.images, tta=True))
        for key in ("top1", "top2", "macro_f1"):
            result[f"{key}_tta"] = result["tta"][key]
        if model.preprocess.network_side < model.preprocess.input_size:
            result["ten_crop"] = score(split.labels, predict_all(model, split.images, tta="ten-crop"))
            for key in ("top1", "top2", "macro_f1"):
                result[f"{key}_ten_crop"] = result["ten_crop"][key]
    if measure_throughput:
        result["throughput"] = throughput(model_dir, split.images[:THROUGHPUT_BATCH])
        if result.get("ten_crop"):
            result["throughput_ten_crop"] = throughput(model_dir, split.images[:THROUGHPUT_BATCH], tta="ten-crop")
    return result


def metrics_summary(result: dict) -> dict:
    """The numbers stored in metadata.json for one split (no matrices)."""
    keys = ("n", "top1", "top2", "macro_f1", "top1_tta", "top2_tta", "macro_f1_tta",
            "top1_ten_crop", "top2_ten_crop", "macro_f1_ten_crop")
    summary = {k: (round(result[k], 5) if isinstance(result[k], float) else result[k]) for k in keys if k in result}
    if result.get("throughput"):
        summary["faces_per_s"] = result["throughput"]["faces_per_s"]
    if result.get("throughput_ten_crop"):
        summary["faces_per_s_ten_crop"] = result["throughput_ten_crop"]["faces_per_s"]
    return summary


# --- presentation -------------------------------------------------------------------------------

def confusion_png(confusion: list[list[int]], path: Path, title: str = "") -> Path:
    """Draw a row-normalised confusion matrix with counts (OpenCV; no plotting library needed)."""
    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    cell, left, top = 64, 100, 60
    size_w, size_h = left + cell * NUM_EMOTIONS + 20, top + cell * NUM_EMOTIONS + 70
    canvas = np.full((size_h, size_w, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, title[:48], (10, 22), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(NUM_EMOTIONS):
        for j in range(NUM_EMOTIONS):
            value = normalised[i, j]
            shade = int(255 * (1 - value))
            colour = (255, shade, shade) if i != j else (shade, 255 - int(127 * value), shade)  # BGR: blue, green diagonal
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(canvas, (x0, y0), (x0 + cell, y0 + cell), colour, -1)
            cv2.rectangle(canvas, (x0, y0), (x0 + cell, y0 + cell), (200, 200, 200), 1)
            ink = (255, 255, 255) if value > 0.55 else (0, 0, 0)
            cv2.putText(canvas, f"{int(matrix[i, j])}", (x0 + 6, y0 + 26), font, 0.45, ink, 1, cv2.LINE_AA)
            cv2.putText(canvas, f"{value:.0%}", (x0 + 6, y0 + 48), font, 0.4, ink, 1, cv2.LINE_AA)
        cv2.putText(canvas, EMOTIONS[i], (8, top + i * cell + 38), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        label_x = left + i * cell + 4
        cv2.putText(canvas, EMOTIONS[i][:8], (label_x, top + cell * NUM_EMOTIONS + 20), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(canvas, "rows: true label, columns: predicted", (left, size_h - 20), font, 0.45, (80, 80, 80), 1,
                cv2.LINE_AA)
    path = Path(path)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cannot write {path}")
    return path


def markdown_summary(results_by_split: dict[str, dict]) -> str:
    ten_crop = any("top1_ten_crop" in r for r in results_by_split.values())
    header = "| split | n | top-1 | top-2 | macro F1 | top-1 (flip TTA) | top-2 (flip TTA) | macro F1 (flip TTA) |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if ten_crop:
        header += " top-1 (ten-crop) | top-2 (ten-crop) | macro F1 (ten-crop) |"
        rule += "---:|---:|---:|"
    lines = [header, rule]

    def cells(r: dict, suffix: str) -> str:
        accuracy = [f"{r[k + suffix]:.2%}" if k + suffix in r else "–" for k in ("top1", "top2")]
        f1 = f"{r['macro_f1' + suffix]:.3f}" if "macro_f1" + suffix in r else "–"
        return f"{accuracy[0]} | {accuracy[1]} | {f1} |"

    for name, r in results_by_split.items():
        line = f"| {name} | {r['n']} | {cells(r, '')} {cells(r, '_tta')}"
        lines.append(line + (f" {cells(r, '_ten_crop')}" if ten_crop else ""))
    return "\n".join(lines)


def markdown_per_class(result: dict) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, m in result["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    return "\n".join(lines)


def markdown_confusion(confusion: list[list[int]]) -> str:
    lines = ["| true \\ predicted | " + " | ".join(EMOTIONS) + " |", "|---|" + "---:|" * NUM_EMOTIONS]
    for name, row in zip(EMOTIONS, confusion):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def training_section(meta: dict) -> list[str]:
    """How the model was trained: the command, the full config and the time, from its metadata."""
    from shared.training import train_command

    if meta.get("campaign"):
        return campaign_section(meta)
    config = meta.get("train_config")
    if not config:
        return []
    command, other = train_command(config)
    lines = ["## Training", "", "```", command, "```", ""]
    if other:
        lines += ["Settings without a command-line flag, not at their defaults: "
                  + ", ".join(f"`{k}={v}`" for k, v in other.items()) + ".", ""]
    seconds = meta.get("training_seconds")
    lines += [f"Training time: {seconds:.0f} s." if seconds else "Training time: not recorded for this run.", "",
              "Full configuration:", "", "```json", json.dumps(config, indent=2), "```", ""]
    return lines


def campaign_section(meta: dict) -> list[str]:
    """A campaign's sittings (each stretch of epochs, its command and wall time) and its recipe."""
    campaign = meta["campaign"]
    lines = ["## Training", "",
             f"Campaign `{campaign['name']}` (state in `{campaign['run_dir']}`): {campaign['epochs_done']} of "
             f"{campaign['total_epochs']} epochs trained; this model is its best epoch on PublicTest, "
             f"epoch {campaign['best_epoch']}.", ""]
    if campaign.get("ensemble"):
        members = ", ".join(f"`{m['name']}` epoch {m['best_epoch']} ({m['architecture']}, `{m['run_dir']}`)"
                            for m in campaign["ensemble"])
        lines += [f"An ensemble exported as one graph: the mean of the probabilities of {members}. "
                  f"The curve and the sittings below are those of `{campaign['name']}`.", ""]
    lines += ["![learning curve](curve.png)", "",
              "| epochs | command | wall time | machine |", "|---|---|---:|---|"]
    for stretch in campaign.get("stretches", []):
        if stretch["last_epoch"] >= stretch["first_epoch"]:
            lines.append(f"| {stretch['first_epoch']}–{stretch['last_epoch']} | `{stretch['command']}` | "
                         f"{stretch['wall_s'] / 60:.0f} min | {stretch['machine']} |")
    lines += ["", "Recipe:", "", "```json", json.dumps(meta.get("train_config"), indent=2), "```", ""]
    return lines


def write_report(model_dir: Path, results_by_split: dict[str, dict]) -> Path:
    """report.md (and confusion_<split>.png) in `model_dir` from `evaluate` results keyed by split name."""
    model_dir = Path(model_dir)
    try:
        meta = read_metadata(model_dir).model_dump()
    except ModelError:
        meta = {}
    lines = [f"# Model {meta.get('version', model_dir.name)}", ""]
    facts = [("architecture", meta.get("architecture")), ("parameters", meta.get("params")),
             ("preprocess", json.dumps(meta.get("preprocess")) if meta.get("preprocess") else None),
             ("dataset fingerprint", meta.get("data_fingerprint")), ("code version", meta.get("code_version")),
             ("training time (s)", meta.get("training_seconds")), ("created", meta.get("created")),
             ("model.tflite sha256", meta.get("sha256"))]
    lines += [f"- {name}: {value}" for name, value in facts if value is not None]
    lines += ["", "Measured on the exported LiteRT model (`model.tflite`), as served.", "",
              "## Summary", "", markdown_summary(results_by_split), ""]
    speeds = {name: r["throughput"] for name, r in results_by_split.items() if r.get("throughput")}
    if speeds:
        name, speed = next(iter(speeds.items()))
        tencrop = results_by_split[name].get("throughput_ten_crop")
        lines += [f"Throughput: {speed['faces_per_s']:.0f} faces/s (one thread, batch {speed['batch']}, "
                  f"median of {speed['repeats']} repeats)"
                  + (f"; with ten-crop TTA {tencrop['faces_per_s']:.0f} faces/s." if tencrop else "."), ""]
    for name, r in results_by_split.items():
        png = confusion_png(r["confusion"], model_dir / f"confusion_{name}.png", f"{meta.get('version', '')} {name}")
        lines += [f"## {name}", "", markdown_per_class(r), "", "Confusion matrix (counts, no TTA):", "",
                  markdown_confusion(r["confusion"]), "", f"![confusion matrix {name}]({png.name})", ""]
        if r.get("tta"):
            lines += ["With flip TTA:", "", markdown_per_class(r["tta"]), ""]
        if r.get("ten_crop"):
            lines += ["With ten-crop TTA:", "", markdown_per_class(r["ten_crop"]), "",
                      "Confusion matrix with ten-crop TTA:", "", markdown_confusion(r["ten_crop"]["confusion"]), ""]
    lines += training_section(meta)
    path = model_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
