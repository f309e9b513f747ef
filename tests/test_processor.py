"""The processor contract: every hook the loop calls has a default; counters hand out what is new once."""

from __future__ import annotations

import pytest

from shared.processor import Counters, Outbound, Processor
from shared.schemas import FaceMessage
from tests.conftest import make_faces


class Plain(Processor[FaceMessage]):
    input_model = FaceMessage

    def handle(self, batch):
        self.counters.add("seen", len(batch))
        return []


class Split(Processor[FaceMessage]):
    input_model = FaceMessage

    def prepare(self, batch):
        return len(batch)

    def finish(self, batch, prepared):
        return [Outbound("x", {b"n": str(prepared).encode()})]


def test_defaults_and_which_processors_may_overlap():
    assert not Plain.splits_prepare() and Split.splits_prepare()
    assert Split().handle(make_faces(3))[0].fields == {b"n": b"3"}  # handle = finish(prepare)
    assert Plain().heartbeat_info() == {} and Plain().stage_writes(pipe=None) is None

    class Nothing(Processor[FaceMessage]):
        input_model = FaceMessage

    with pytest.raises(NotImplementedError, match="Nothing must override handle"):
        Nothing().handle(make_faces(1))


def test_counters_hand_out_what_is_new_and_keep_totals():
    counters = Counters()
    counters.add("a", 2)
    counters.add("a")
    counters.add("b", 0)
    assert counters.take() == {"a": 3} and counters.take() == {}
    counters.add("a")
    assert counters["a"] == 4 and counters["b"] == 0
