"""Export a trained Keras model to a servable directory: model.keras, model.tflite, metadata.json.

The LiteRT file is what services run; its metadata (classes, crop preprocessing, metrics, checksum,
dataset fingerprint, code version) is validated with `shared.model_runtime.ModelMetadata` before the
export is considered done. `check_roundtrip` proves the LiteRT graph computes what Keras computes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from shared.emotions import EMOTIONS
from shared.model_runtime import KERAS_FILE, METADATA_FILE, MODEL_FILE, EmotionModel, ModelMetadata, Preprocess, file_sha256
from shared.settings import REPO_ROOT

log = logging.getLogger(__name__)

ROUNDTRIP_TOLERANCE = 1e-4
# Weights stored as float16 round each to ~3 significant digits; probabilities then move by ~1e-3.
FLOAT16_ROUNDTRIP_TOLERANCE = 1e-2


class ExportError(RuntimeError):
    """The export could not be produced, or the LiteRT model disagrees with Keras."""


def code_version() -> str:
    """`git describe` of the repository when it is a checkout, else the installed package version."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if described:
            return f"git:{described}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"package:{version('emotion-platform')}"
    except PackageNotFoundError:
        return "unknown"


def _load_keras(model_or_path):
    import keras

    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise ExportError(f"{path}: no such Keras model file")
        return keras.models.load_model(path, compile=False)
    return model_or_path


def to_tflite(model, float16_weights: bool = False) -> bytes:
    """LiteRT flatbuffer with a dynamic batch dimension (the runtime resizes per batch). Float32
    throughout, or with `float16_weights` the weights stored as float16 (half the file; the runtime
    widens them to float32 once at load, so the arithmetic and its speed are unchanged)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT] if float16_weights else []
    if float16_weights:
        converter.target_spec.supported_types = [tf.float16]
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):  # Keras prints the traced signature; keep stdout for results
        flatbuffer = converter.convert()
    log.debug("converter output: %s", chatter.getvalue())
    return flatbuffer


def export_model(keras_model_or_path, out_dir: Path, *, version: str, architecture: str, metrics: dict,
                 data_fingerprint: str | None, training_seconds: float | None, train_config: dict,
                 preprocess: Preprocess | None = None, keep_keras: bool = True,
                 float16_weights: bool = False) -> Path:
    """Write model.keras, model.tflite and metadata.json into `out_dir` (created) and return it.

    `keep_keras=False` leaves out model.keras (a campaign keeps its own float16 weights to fine-tune from).
    """
    model = _load_keras(keras_model_or_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_shape = tuple(model.input_shape[1:])
    preprocess = preprocess or Preprocess(input_size=int(input_shape[0]), grayscale=input_shape[-1] == 1)
    if int(model.output_shape[-1]) != len(EMOTIONS):
        raise ExportError(f"model has {model.output_shape[-1]} outputs, expected {len(EMOTIONS)}")

    if keep_keras:
        model.save(out_dir / KERAS_FILE)
    tflite_path = out_dir / MODEL_FILE
    tmp = tflite_path.with_suffix(".tflite.tmp")
    tmp.write_bytes(to_tflite(model, float16_weights))
    tmp.replace(tflite_path)

    import tensorflow as tf

    metadata = {
        "version": version,
        "architecture": architecture,
        "classes": list(EMOTIONS),
        "preprocess": preprocess.model_dump(),
        "metrics": metrics,
        "sha256": file_sha256(tflite_path),
        "data_fingerprint": data_fingerprint,
        "code_version": code_version(),
        "training_seconds": None if training_seconds is None else round(float(training_seconds), 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": int(model.count_params()),
        "tflite_bytes": tflite_path.stat().st_size,
        "tflite_weights": "float16" if float16_weights else "float32",
        "tensorflow": tf.__version__,
        "train_config": train_config,
    }
    write_metadata(out_dir, metadata)
    log.info("exported %s (%s, %d params) to %s", version, architecture, metadata["params"], out_dir)
    return out_dir


def write_metadata(model_dir: Path, metadata: dict) -> None:
    """Validate and write metadata.json atomically (a half-written file never reaches a registry)."""
    ModelMetadata.model_validate(metadata)
    path = Path(model_dir) / METADATA_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    tmp.replace(path)


def update_metadata(model_dir: Path, **fields) -> dict:
    """Merge `fields` into an exported model's metadata (e.g. metrics measured after export)."""
    data = json.loads((Path(model_dir) / METADATA_FILE).read_text())
    data.update(fields)
    write_metadata(model_dir, data)
    return data


def check_roundtrip(model_dir: Path, keras_model_or_path=None, images: np.ndarray | None = None,
                    atol: float = ROUNDTRIP_TOLERANCE) -> float:
    """Max |LiteRT - Keras| probability difference on a batch; ExportError when it exceeds `atol`.

    Without `images`, a fixed random batch of 32 grey faces is used; without a Keras model, the
    exported model.keras is loaded.
    """
    model_dir = Path(model_dir)
    model = _load_keras(keras_model_or_path if keras_model_or_path is not None else model_dir / KERAS_FILE)
    served = EmotionModel(model_dir)
    size = served.preprocess.input_size
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (32, size, size), dtype=np.uint8)
    side = served.preprocess.network_side
    offset = (images.shape[1] - side) // 2  # Keras sees what the runtime feeds the graph
    window = images[:, offset:offset + side, offset:offset + side]
    expected = np.asarray(model.predict(window.astype(np.float32)[..., None], verbose=0))
    actual = served.predict(images)
    difference = float(np.max(np.abs(expected - actual)))
    if difference > atol:
        raise ExportError(f"{model_dir}: LiteRT predictions differ from Keras by {difference:.2e} (> {atol:.0e})")
    return difference


def export_run(run_dir: Path, out_dir: Path, version: str, data_dir: Path | str | None = None, *,
               evaluate_training: bool = True, tta: bool = True) -> Path:
    """Export a finished `trainer.train` run (its best.keras) and evaluate it; returns the model dir.

    Reads the run's config.json / result.json for provenance, checks the LiteRT round trip, evaluates
    on PublicTest and PrivateTest when the dataset has them (and Training when `evaluate_training`),
    stores those metrics in metadata.json and writes report.md with confusion matrices beside the model.
    """
    from trainer.evaluate import evaluate, metrics_summary, write_report

    run_dir = Path(run_dir)
    best = run_dir / "best.keras"
    if not best.is_file():
        raise ExportError(f"{run_dir}: no best.keras (is this a training run directory?)")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
    data = Path(data_dir) if data_dir is not None else Path(config["data"]) if config.get("data") else None
    if data is None:
        raise ExportError(f"{run_dir}: no data_dir given and config.json names no dataset")
    architecture = config.get("model") or "unknown"

    model = _load_keras(best)
    export_model(model, out_dir, version=version, architecture=architecture, metrics={},
                 data_fingerprint=result.get("data_fingerprint"), training_seconds=result.get("seconds"),
                 train_config=config)
    difference = check_roundtrip(out_dir, model)
    log.info("LiteRT round trip: max difference %.2e", difference)

    splits = evaluation_splits(data, int(config.get("seed", 1337)))
    # PrivateTest is reported, never selected on: the checkpoint was already chosen on PublicTest.
    wanted = ["PublicTest", "PrivateTest"] + (["Training"] if evaluate_training else [])
    results = {name: evaluate(out_dir, splits[name], tta=tta) for name in wanted if name in splits}
    if not results:
        raise ExportError(f"{data}: neither PublicTest nor Training found to evaluate on")
    update_metadata(out_dir, metrics={name: metrics_summary(r) for name, r in results.items()},
                    roundtrip_max_diff=difference)
    write_report(out_dir, results)
    return Path(out_dir)


def evaluation_splits(data: Path | str, seed: int = 1337) -> dict:
    """Splits of a dataset to report on; without PublicTest, the same holdout `train` validated on."""
    from trainer.data import load_dataset
    from trainer.train import holdout

    splits = load_dataset(data)
    if "PublicTest" not in splits and "Training" in splits:
        splits["Training"], splits["PublicTest"] = holdout(splits["Training"], 0.1, seed)
    return splits
