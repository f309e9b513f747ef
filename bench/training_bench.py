"""Training cost per architecture, and the served model's accuracy per unit of inference cost.

For each model of `trainer.models`: compile it as `trainer.train.train` does (AdamW, cosine schedule,
label smoothing) and fit 2 epochs on a stratified subset of FER-2013 Training through the real
augmenting tf.data pipeline. Epoch 1 includes graph tracing, so epoch 2 is the measurement;
seconds per full epoch = epoch-2 seconds x (full Training size / subset size).

The served model (registry current version, else models/default): PublicTest top-1 and faces/s
from its metadata when the export recorded them, else measured here on LiteRT (1 thread, batch 64).

    python -m bench.training_bench --models compact,baseline --images 1024 [--json]
    emotion bench training --models compact,baseline --images 1024 [--json]   (same thing)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import FER_PUBLICTEST, FER_TRAINING, format_table, load_fer, median, serving_model_dir  # noqa: E402
from shared.settings import Settings  # noqa: E402

FULL_TRAINING_IMAGES = 28_709  # FER-2013 Training


def _time_epochs(model_name: str, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 1337) -> dict:
    import keras

    from shared.training import TrainConfig
    from trainer.data import Split
    from trainer.models import make_model
    from trainer.pipeline import training_dataset
    from trainer.train import class_weights

    defaults = {name: field.default for name, field in TrainConfig.model_fields.items()}  # what `emotion train` uses
    keras.utils.set_random_seed(seed)
    split = Split("Training", images, labels, None)
    weights = class_weights(labels, defaults['class_weight'])
    dataset = training_dataset(split, batch_size, seed, weights[labels], augment=True)
    steps = int(np.ceil(len(images) / batch_size)) * 2
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(steps - steps // 20, 1),
                                                      warmup_target=defaults['learning_rate'], warmup_steps=steps // 20)
    model = make_model(model_name)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=defaults['weight_decay']),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=defaults['label_smoothing']),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    model.fit(dataset, epochs=2, callbacks=[Timer()], verbose=0)
    per_image = times[-1] / len(images)
    return {"model": model_name, "params": int(model.count_params()), "subset_images": int(len(images)),
            "batch_size": batch_size, "first_epoch_s": round(times[0], 2), "epoch_s": round(times[-1], 2),
            "ms_per_image": round(per_image * 1000, 3),
            "full_epoch_s": round(per_image * FULL_TRAINING_IMAGES, 1)}


def served_model_cost(settings: Settings, fer_path: Path | None = None) -> dict:
    """Accuracy per unit of inference cost of the model the classifier serves."""
    from shared.model_runtime import EmotionModel, ModelError, read_metadata

    try:
        model_dir = serving_model_dir(settings, None)
    except ModelError as exc:
        return {"skipped": str(exc)}
    metadata = read_metadata(model_dir)
    extra = metadata.model_extra or {}
    public = metadata.metrics.get("PublicTest", {}) if isinstance(metadata.metrics, dict) else {}
    top1, faces_per_s, source = public.get("top1"), public.get("faces_per_s"), "metadata"
    if top1 is None or faces_per_s is None:
        fer = load_fer(fer_path or FER_PUBLICTEST)
        model = EmotionModel(model_dir, threads=1)
        images = fer[0] if fer is not None else np.zeros((640, 48, 48), np.uint8)
        model.predict(images[:64])
        rates, predictions = [], []
        for _ in range(3):
            started, predictions = time.perf_counter(), []
            for start in range(0, len(images), 64):
                predictions.append(model.predict(images[start:start + 64]))
            rates.append(len(images) / (time.perf_counter() - started))
        faces_per_s = faces_per_s or round(median(rates), 1)
        if top1 is None and fer is not None:
            top1 = round(float((np.concatenate(predictions).argmax(1) == fer[1]).mean()), 4)
        source = "measured here (metadata has no PublicTest metrics)"
    us_per_face = 1e6 / faces_per_s
    return {"model_dir": str(model_dir), "version": metadata.version, "architecture": metadata.architecture,
            "params": extra.get("params"), "tflite_bytes": extra.get("tflite_bytes") or
            (model_dir / "model.tflite").stat().st_size, "publictest_top1": top1, "faces_per_s_1thread_b64": faces_per_s,
            "us_per_face": round(us_per_face, 1),
            "top1_per_100us": round(top1 / us_per_face * 100, 4) if top1 is not None else None, "source": source}


def run_training_bench(settings: Settings, *, models: list[str], images: int = 1024, data: Path | None = None,
                       batch_size: int = 128) -> dict:
    served = served_model_cost(settings)
    rows: list[dict] = []
    skipped = None
    fer = load_fer(data or FER_TRAINING)
    if fer is None:
        skipped = f"FER-2013 training archive not found at {data or FER_TRAINING}"
    else:
        try:
            import keras  # noqa: F401
        except ImportError:
            skipped = "TensorFlow/Keras not installed (pip install -e '.[train]')"
    if skipped is None:
        from trainer.data import Split
        from trainer.train import stratified_subsample

        subset = stratified_subsample(Split("Training", fer[0], fer[1], None), images, seed=1337)
        rows = [_time_epochs(name, subset.images, subset.labels, batch_size) for name in models]
    return {"benchmark": "training", "full_training_images": FULL_TRAINING_IMAGES, "skipped": skipped,
            "table": rows, "served_model": served}


def table(result: dict) -> str:
    lines = []
    if result["skipped"]:
        lines.append(f"training: skipped ({result['skipped']})")
    else:
        rows = [(r["model"], f"{r['params']:,}", r["subset_images"], r["epoch_s"], r["ms_per_image"], r["full_epoch_s"])
                for r in result["table"]]
        lines.append("seconds per training epoch (epoch 2 of 2 on the subset, extrapolated to 28,709 images)")
        lines.append(format_table(("model", "params", "subset", "epoch s", "ms/image", "full epoch s"), rows))
    served = result["served_model"]
    if "skipped" in served:
        lines.append(f"served model: none ({served['skipped']})")
    else:
        lines.append(f"served model {served['version']} ({served['architecture']}): PublicTest top-1 "
                     f"{served['publictest_top1']}, {served['faces_per_s_1thread_b64']} faces/s (1 thread, batch 64) "
                     f"= {served['us_per_face']} us/face -> {served['top1_per_100us']} top-1 per 100 us "
                     f"[{served['source']}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.common import emit, run_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="compact,baseline")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_training_bench(Settings(), models=[m for m in args.models.split(",") if m], images=args.images,
                                data=args.data, batch_size=args.batch_size)
    result["run"] = run_info(argv if argv is not None else sys.argv[1:], program="python -m bench.training_bench")
    emit(result, table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
