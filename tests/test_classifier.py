"""The classifier service: track states saved with the commit, flip TTA, preprocess ids (smoothing: test_smoothing.py)."""

import numpy as np
import pytest

from tests.messages import make_face


def test_track_state_is_only_stored_when_the_worker_commits(model_dir):
    """States are written by stage_writes (inside the worker's commit), never by handle itself, so a
    batch whose commit failed and is retried does not smooth on top of its own first attempt."""
    from services.classifier.service import ClassifierProcessor, MemoryTrackStore
    from shared.model_runtime import EmotionModel
    from shared.schemas import EmotionEvent, decode
    from shared.streams import Keys

    store = MemoryTrackStore()
    processor = ClassifierProcessor(EmotionModel(model_dir), Keys("t"), store, tau_ms=600)
    outbound = processor.handle([make_face(track_id=3, captured_ms=1000)])
    assert store.states == {}
    processor.stage_writes(pipe=None)
    event = decode(EmotionEvent, {k.encode(): v for k, v in outbound[0].fields.items()})
    assert list(store.states) == ["cam0:3"]
    assert store.states["cam0:3"].probabilities.tolist() == pytest.approx(event.smoothed)
    processor.stage_writes(pipe=None)  # nothing new: nothing written twice
    assert list(store.states) == ["cam0:3"]


def test_flip_tta_serves_the_mean_of_a_face_and_its_mirror_image(model_dir, settings, redis_client):
    """EMOTION_CLASSIFIER__FLIP_TTA reaches the replica, and its events carry the mirrored average."""
    from services.classifier.run import build_worker
    from shared.model_runtime import EmotionModel

    rng = np.random.default_rng(3)
    crop = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    face = make_face(track_id=1, crop=crop.tobytes())
    model = EmotionModel(model_dir)
    plain, mirrored = model.predict(crop[None]), model.predict(crop[None, :, ::-1].copy())
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the test means something only if they differ

    tta_settings = settings.model_copy(update={
        "default_model_dir": model_dir, "classifier": settings.classifier.model_copy(update={"flip_tta": True})})
    processor = build_worker(tta_settings, redis_client).processor
    assert processor.flip_tta
    inference = processor.prepare([face])
    np.testing.assert_allclose(inference.probabilities, (plain + mirrored) / 2, atol=1e-6)


def test_a_face_cropped_for_another_model_is_classified_and_counted(model_dir):
    """The preprocess id names how a crop was made; a face from the previous model's preprocessing
    (a promotion reaches the detector a moment before or after the classifier) is still classified."""
    from services.classifier.service import ClassifierProcessor, MemoryTrackStore
    from shared.model_runtime import EmotionModel
    from shared.streams import Keys

    model = EmotionModel(model_dir)
    processor = ClassifierProcessor(model, Keys("t"), MemoryTrackStore(), tau_ms=600)
    same = make_face(frame_id=1, preprocess=model.preprocess.id)
    other = make_face(frame_id=2, preprocess="g48-0000other")
    assert len(processor.handle([same, other])) == 2
    assert processor.counters.take() == {"preprocess_mismatch": 1}
    assert processor.heartbeat_info()["preprocess_mismatch"] == 1
