"""The detector service: frames it refuses, and crops that follow the served model's preprocessing."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from services.detector.run import build_worker
from services.detector.service import decode_frame
from shared.model_runtime import read_metadata
from shared.registry import ModelRegistry
from shared.schemas import FaceMessage, FrameMessage, MessageError, decode, encode
from tests.conftest import demo_frames


def test_a_frame_that_does_not_decode_to_its_announced_size_is_refused():
    frame = demo_frames(1)[0]
    with pytest.raises(MessageError, match="does not decode"):
        decode_frame(frame.model_copy(update={"jpeg": b"\xff\xd8not a jpeg"}))
    with pytest.raises(MessageError, match="announced"):
        decode_frame(FrameMessage.model_validate({**frame.model_dump(), "width": frame.width + 2, "jpeg": frame.jpeg}))


def test_crops_follow_a_promoted_models_preprocessing(redis_client, keys, pipeline_settings, model_dir, tmp_path):
    """The detector crops with the preprocessing of the model being served, and moves to a newly
    promoted model's within model_check_s, so every face is cropped as its classifier expects."""
    settings = pipeline_settings.model_copy(update={"model_check_s": 0.01})
    registry = ModelRegistry(settings.registry_dir, redis_client, keys, settings.default_model_dir)
    wide = tmp_path / "wide"
    shutil.copytree(model_dir, wide)
    metadata = json.loads((wide / "metadata.json").read_text())
    metadata["preprocess"]["margin"] = 0.2  # a model trained on wider crops
    (wide / "metadata.json").write_text(json.dumps(metadata))
    registry.register(wide, version="wide")
    served, promoted = read_metadata(model_dir).preprocess.id, read_metadata(wide).preprocess.id
    assert served != promoted

    def publish(frames) -> None:
        for frame in frames:
            redis_client.xadd(keys.frames, encode(frame))

    worker = build_worker(settings, redis_client)
    publish(demo_frames(5, session="before"))
    worker.run(burst=True)
    registry.promote("wide")
    time.sleep(0.02)  # past model_check_s: the next batch looks for a new model first
    publish(demo_frames(5, session="after"))
    worker.run(burst=True)
    faces = [decode(FaceMessage, fields) for _, fields in redis_client.xrange(keys.faces)]
    assert {f.preprocess for f in faces if f.session_id == "before"} == {served}
    assert {f.preprocess for f in faces if f.session_id == "after"} == {promoted}
    assert worker.processor.heartbeat_info()["preprocess"] == promoted
    assert worker.processor.follower.swaps == 1
