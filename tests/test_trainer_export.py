"""Export (Keras -> LiteRT + metadata), evaluation of the exported model, reports and face cleaning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.emotions import EMOTIONS
from shared.model_runtime import EmotionModel, file_sha256, read_metadata
from tests.trainer_fixtures import exported_model, faces, write_fer_folder, write_npz
from trainer.data import Split, load_npz

pytestmark = pytest.mark.slow  # imports TensorFlow


def test_export_writes_servable_model_with_complete_metadata():
    """metadata.json validates as ModelMetadata and carries provenance; the LiteRT batch dimension is dynamic."""
    model_dir = exported_model()
    for name in ("model.keras", "model.tflite", "metadata.json"):
        assert (model_dir / name).is_file()
    meta = read_metadata(model_dir)
    assert meta.classes == list(EMOTIONS) and meta.architecture == "compact16"
    assert meta.preprocess.input_size == 48 and meta.preprocess.grayscale and not meta.preprocess.equalize_hist
    assert meta.preprocess.input_range == "0-255" and meta.preprocess.margin == 0.0
    assert meta.sha256 == file_sha256(model_dir / "model.tflite")
    extra = meta.model_dump()
    assert extra["params"] > 10_000 and extra["code_version"] and extra["created"]
    assert extra["data_fingerprint"] == "0" * 16 and extra["train_config"] == {"model": "compact16"}
    model = EmotionModel(model_dir)
    for batch in (1, 64, 3):
        probabilities = model.predict(faces(batch)[0])
        assert probabilities.shape == (batch, 7) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def test_litert_matches_keras_within_tolerance():
    """The exported LiteRT graph computes what the Keras model computes (max difference <= 1e-4)."""
    from trainer.export import check_roundtrip

    assert check_roundtrip(exported_model(), images=faces(64, 3)[0]) <= 1e-4
    assert check_roundtrip(exported_model()) <= 1e-4  # default random batch


def test_float16_weights_halve_the_file_and_keep_the_predictions(tmp_path):
    """Shipped campaigns store float16 weights (the VGG's file is committed): half the bytes, and the
    probabilities within the float16 tolerance of the Keras model's."""
    import keras

    from trainer.export import FLOAT16_ROUNDTRIP_TOLERANCE, check_roundtrip, export_model

    model = keras.models.load_model(exported_model() / "model.keras")
    out = export_model(model, tmp_path / "half", version="half", architecture="compact16", metrics={},
                       data_fingerprint=None, training_seconds=None, train_config={}, float16_weights=True)
    full_bytes = (exported_model() / "model.tflite").stat().st_size
    half_bytes = (out / "model.tflite").stat().st_size
    assert half_bytes < 0.6 * full_bytes
    assert read_metadata(out).model_dump()["tflite_weights"] == "float16"
    assert read_metadata(exported_model()).model_dump()["tflite_weights"] == "float32"
    assert check_roundtrip(out, model, images=faces(64, 3)[0], atol=FLOAT16_ROUNDTRIP_TOLERANCE) > 0


def test_roundtrip_check_catches_a_different_model(tmp_path):
    """Guards the check itself: a LiteRT file that is not the Keras model fails loudly."""
    import keras

    from trainer.export import ExportError, check_roundtrip
    from trainer.models import make_model

    keras.utils.set_random_seed(99)
    with pytest.raises(ExportError, match="differ"):
        check_roundtrip(exported_model(), make_model("compact16"), images=faces(16)[0])


def test_score_matches_hand_computed_metrics():
    from trainer.evaluate import score

    labels = np.array([0, 0, 1, 3])
    probabilities = np.zeros((4, 7), np.float32)
    probabilities[0, [0, 1]] = [0.6, 0.4]  # correct
    probabilities[1, [1, 0]] = [0.7, 0.3]  # wrong, right class second
    probabilities[2, [1, 2]] = [0.9, 0.1]  # correct
    probabilities[3, [0, 2]] = [0.8, 0.2]  # wrong, not in top 2
    result = score(labels, probabilities)
    assert result["n"] == 4 and result["top1"] == 0.5 and result["top2"] == 0.75
    assert result["confusion"][0][:2] == [1, 1] and result["confusion"][3][0] == 1
    angry, disgust, happy = (result["per_class"][n] for n in ("angry", "disgust", "happy"))
    assert angry["precision"] == 0.5 and angry["recall"] == 0.5 and angry["f1"] == 0.5
    assert disgust["precision"] == 0.5 and disgust["recall"] == 1.0 and disgust["f1"] == pytest.approx(2 / 3)
    assert happy["f1"] == 0.0 and happy["support"] == 1
    assert result["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)  # over classes present


def test_evaluate_exported_model_with_and_without_tta(tmp_path):
    from trainer.evaluate import evaluate, write_report

    images, labels = faces(70, 4)
    result = evaluate(exported_model(), Split("PublicTest", images, labels), tta=True)
    for key in ("top1", "top2", "macro_f1", "top1_tta", "top2_tta", "macro_f1_tta"):
        assert 0.0 <= result[key] <= 1.0
    assert result["n"] == 70 and np.array(result["confusion"]).sum() == 70
    assert set(result["per_class"]) == set(EMOTIONS)
    assert result["throughput"]["faces_per_s"] > 0 and result["throughput"]["batch"] == 16  # the live micro-batch
    plain = evaluate(exported_model(), Split("PublicTest", images, labels), tta=False, measure_throughput=False)
    assert plain["tta"] is None and "top1_tta" not in plain and plain["top1"] == result["top1"]

    import shutil

    target = shutil.copytree(exported_model(), tmp_path / "model")
    report = write_report(target, {"PublicTest": result})
    text = report.read_text()
    assert "| PublicTest | 70 |" in text and "faces/s" in text and "| true \\ predicted |" in text
    png = target / "confusion_PublicTest.png"
    import cv2

    assert cv2.imread(str(png)).shape[0] > 400


def test_export_run_exports_evaluates_and_reports(tmp_path):
    """What the lead runs on a finished training run: best.keras -> registry-ready dir with metrics and report."""
    import keras

    from shared.training import TrainConfig
    from trainer.export import export_run

    data = write_fer_folder(tmp_path / "fer data", n_train=70, n_val=35)
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    keras.models.load_model(exported_model() / "model.keras").save(run_dir / "best.keras")
    (run_dir / "config.json").write_text(TrainConfig(data=data, model="compact16").model_dump_json())
    (run_dir / "result.json").write_text(json.dumps({"seconds": 12.5, "data_fingerprint": "abc"}))
    write_npz(data / "fer2013_privatetest.npz", 21, seed=3, ids_start=105)  # reported, never selected on
    out = export_run(run_dir, tmp_path / "out" / "v1", "v1")
    meta = read_metadata(out)
    assert meta.version == "v1" and meta.architecture == "compact16"
    assert set(meta.metrics) == {"PublicTest", "PrivateTest", "Training"}
    assert meta.metrics["PrivateTest"]["n"] == 21
    assert meta.metrics["PublicTest"]["n"] == 35 and "top1_tta" in meta.metrics["PublicTest"]
    extra = meta.model_dump()
    assert extra["training_seconds"] == 12.5 and extra["data_fingerprint"] == "abc"
    assert extra["roundtrip_max_diff"] <= 1e-4
    assert (out / "report.md").exists() and (out / "confusion_Training.png").exists()
    EmotionModel(out)  # checksum still matches after the metadata update


def test_drop_faceless_counts_per_class():
    """Images without a detected face are dropped; counts per class land in skipped (stub detector)."""
    from trainer.cleaning import drop_faceless

    class EveryOther:
        calls = 0

        def detect(self, gray):
            EveryOther.calls += 1
            assert gray.shape[0] >= 144  # upscaled before detection
            return [(0, 0, 10, 10)] if EveryOther.calls % 2 else []

    images, labels = faces(14)
    cleaned = drop_faceless(Split("Training", images, labels, skipped={"contempt": 1}), EveryOther())
    assert len(cleaned) == 7
    assert sum(v for k, v in cleaned.skipped.items() if k.startswith("no_face:")) == 7
    assert cleaned.skipped["contempt"] == 1


def test_drop_faceless_with_haar_on_real_faces(fer_publictest):
    """The real cascade keeps most FER faces once upscaled, and drops blank images."""
    from trainer.cleaning import drop_faceless

    real = load_npz(fer_publictest)
    images = np.concatenate([real.images[:40], np.full((10, 48, 48), 128, np.uint8)])
    labels = np.concatenate([real.labels[:40], np.full(10, EMOTIONS.index("sad"))])
    cleaned = drop_faceless(Split("Training", images, labels))
    assert 25 <= len(cleaned) <= 40
    assert cleaned.skipped.get("no_face:sad", 0) >= 10
