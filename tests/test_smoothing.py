"""Per-track smoothing and event building (shared/smoothing.py), as the classifier and `emotion analyze` use them."""

import numpy as np
import pytest

from shared.smoothing import TrackState, build_events, smooth
from tests.messages import make_face


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
