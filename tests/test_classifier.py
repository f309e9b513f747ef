"""The classifier service: event building, per-track smoothing, crop sizing, flip TTA, preprocess ids."""

import numpy as np
import pytest

from services.classifier.service import TrackState, build_events, smooth
from tests.test_schemas import make_face


def test_one_event_per_face_with_top2_and_fer_order():
    faces = [make_face(face_index=i, track_id=i) for i in range(3)]
    probs = np.array([[0.1, 0, 0, 0.6, 0.2, 0, 0.1]] * 3, np.float32)
    events, states = build_events(faces, probs, "v1", {}, tau_ms=500, now_ms=2000)
    assert [e.event_id for e in events] == [f.event_id for f in faces]
    assert events[0].label == "happy" and events[0].top2 == ("happy", "sad")
    assert events[0].smoothed == pytest.approx(events[0].probabilities)  # first face of a track
    assert len(states) == 3


def test_smoothing_damps_a_one_frame_flicker():
    happy = np.array([0, 0, 0, 1, 0, 0, 0], float)
    sad = np.array([0, 0, 0, 0, 1, 0, 0], float)
    state = smooth(None, happy, 0, tau_ms=600)
    for t in range(66, 600, 66):
        state = smooth(state, happy, t, 600)
    flicker = smooth(state, sad, 660, 600)
    assert np.argmax(flicker.probabilities) == 3  # still happy after one sad frame
    assert flicker.probabilities.sum() == pytest.approx(1.0)


def test_smoothing_forgets_after_a_long_gap_and_tolerates_out_of_order():
    happy = np.array([0, 0, 0, 1, 0, 0, 0], float)
    sad = np.array([0, 0, 0, 0, 1, 0, 0], float)
    state = smooth(TrackState(happy, 0), sad, 10_000, 600)
    assert np.argmax(state.probabilities) == 4
    late = smooth(TrackState(happy, 5000), sad, 4000, 600)  # older face arriving late
    assert late.at_ms == 5000 and np.argmax(late.probabilities) == 3


def test_smoothing_is_shared_within_a_batch_for_the_same_track():
    faces = [make_face(frame_id=i, track_id=1, captured_ms=1000 + 66 * i) for i in range(2)]
    probs = np.array([[0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0]], np.float32)
    events, states = build_events(faces, probs, "v1", {}, tau_ms=600, now_ms=5000)
    assert events[1].smoothed_label == "happy" and events[1].label == "sad"
    assert list(states) == ["cam0:1"]


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
