"""Message schemas: round trips, and every kind of malformed entry turned into a MessageError."""

import json
import math

import numpy as np
import pytest

from shared.schemas import (BBox, EmotionEvent, FaceMessage, FrameMessage, MessageError, decode, encode)
from tests.messages import make_event, make_face


def _raw(fields: dict[str, bytes]) -> dict[bytes, bytes]:
    return {k.encode(): v for k, v in fields.items()}


def test_face_round_trip_keeps_crop_bytes_out_of_json():
    face = make_face(crop=bytes(range(256)) * 9)
    fields = encode(face)
    assert b"crop" not in fields["meta"]
    back = decode(FaceMessage, _raw(fields))
    assert back == face and back.crop_array().shape == (48, 48)
    assert back.event_id == "cam0:s1:3:0"


def test_event_round_trip():
    event = make_event()
    assert decode(EmotionEvent, _raw(encode(event))) == event


@pytest.mark.parametrize("mutate, reason", [
    (lambda f: f.pop("meta"), "no 'meta'"),
    (lambda f: f.update(meta=b"{not json"), "invalid FaceMessage"),
    (lambda f: f.update(meta=b"[1, 2]"), "not a JSON object"),
    (lambda f: f.update(crop=b"\x00" * 10), "crop has 10 bytes"),
    (lambda f: f.pop("crop"), "no 'crop'"),
    (lambda f: f.update(meta=f["meta"].replace(b'"schema_version":1', b'"schema_version":2')), "schema_version"),
])
def test_malformed_faces_are_message_errors(mutate, reason):
    fields = encode(make_face())
    mutate(fields)
    with pytest.raises(MessageError, match=reason):
        decode(FaceMessage, _raw(fields))


def test_frame_must_be_jpeg_and_bounded():
    good = FrameMessage(camera_id="c", session_id="s", frame_id=0, captured_ms=1, width=4, height=4, jpeg=b"\xff\xd8xx")
    fields = encode(good)
    fields["jpeg"] = b"GIF89a..."
    with pytest.raises(MessageError, match="not a JPEG"):
        decode(FrameMessage, _raw(fields))
    fields["jpeg"] = b"\xff\xd8" + bytes(9 * 1024 * 1024)
    with pytest.raises(MessageError, match="exceeds"):
        decode(FrameMessage, _raw(fields))


@pytest.mark.parametrize("probs", [[math.nan] + [1 / 6] * 6, [0.5] * 7, [1.0] * 6, [-0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.1]])
def test_event_probabilities_are_validated(probs):
    meta = json.loads(encode(make_event())["meta"])
    meta["probabilities"] = probs
    with pytest.raises(MessageError):
        decode(EmotionEvent, {b"meta": json.dumps(meta).encode()})


def test_pickle_payload_is_rejected_not_unpickled():
    import pickle

    with pytest.raises(MessageError):
        decode(EmotionEvent, {b"meta": pickle.dumps({"event_id": "x"})})


def test_bbox_iou():
    a = BBox(x=0, y=0, w=10, h=10)
    assert a.iou(a) == 1.0
    assert a.iou(BBox(x=5, y=0, w=10, h=10)) == pytest.approx(50 / 150)
    assert a.iou(BBox(x=20, y=20, w=5, h=5)) == 0.0
    assert np.isclose(a.iou(BBox(x=0, y=0, w=10, h=5)), 0.5)
