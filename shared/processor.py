"""The contract between a stream service and the shared loop (shared/worker.py): a `Processor` with
every hook the loop calls, each with a do-nothing default, and the small types they exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, ClassVar, Generic, TypeVar

import redis

from shared.metrics import ServiceMetrics
from shared.schemas import _Message

M = TypeVar("M", bound=_Message)


class TransientError(RuntimeError):
    """A failure of something outside the message (a database, a disk): retry later, never dead-letter."""


@dataclass
class Outbound:
    """One entry to append to a stream (how it is capped is the table of streams' business)."""

    stream: str
    fields: dict[str, bytes]


class Counters:
    """Counters of one processor. `add` as work is done; the loop `take`s what is new and adds it to
    the service's stats hash in the same transaction as the batch's acknowledgement; `totals` keeps
    everything since start (for the heartbeat); `sink`, when the worker sets one, gets every addition
    too (the process's Prometheus counters, shared/metrics.py)."""

    def __init__(self) -> None:
        self._new: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.sink: Callable[[str, int], None] | None = None

    def add(self, name: str, amount: int = 1) -> None:
        if amount:
            self._new[name] = self._new.get(name, 0) + amount
            self.totals[name] = self.totals.get(name, 0) + amount
            if self.sink is not None:
                self.sink(name, amount)

    def take(self) -> dict[str, int]:
        new, self._new = self._new, {}
        return new

    def __getitem__(self, name: str) -> int:
        return self.totals.get(name, 0)


class Processor(Generic[M]):
    """What a service plugs into the loop: a message type and a batch handler, plus optional hooks.

    Override `handle(batch)`, or split it into `prepare(batch)` (the heavy part, e.g. inference,
    touching no shared state: the loop may run it on a helper thread while the previous batch is
    finished) and `finish(batch, prepared)` (run on the loop's thread, in batch order). Raise
    MessageError/ValueError for a bad message (it is dead-lettered alone), TransientError to retry
    the batch later.
    """

    input_model: ClassVar[type[_Message]]

    @cached_property
    def counters(self) -> Counters:
        return Counters()

    @cached_property
    def metrics(self) -> ServiceMetrics:
        """Where latencies and timings go; the worker replaces it with the served ones of its process."""
        return ServiceMetrics(type(self).__name__, process=False)

    def handle(self, batch: list[M]) -> list[Outbound]:
        return self.finish(batch, self.prepare(batch))

    def prepare(self, batch: list[M]) -> Any:
        return None

    def finish(self, batch: list[M], prepared: Any) -> list[Outbound]:
        raise NotImplementedError(f"{type(self).__name__} must override handle, or prepare and finish")

    def stage_writes(self, pipe: redis.client.Pipeline) -> None:
        """Queue on `pipe` (the commit's MULTI/EXEC) state that must move with the acknowledgement."""

    def heartbeat_info(self) -> dict:
        """Extra fields for this replica's heartbeat."""
        return {}

    def model_info(self) -> dict | None:
        """For a processor that serves a model: what it serves (the `emotion_model_info` labels; None
        while none is loaded, which /readyz reports). Processors without a model return None."""
        return None

    @classmethod
    def serves_model(cls) -> bool:
        return cls.model_info is not Processor.model_info

    @classmethod
    def splits_prepare(cls) -> bool:
        """Whether `prepare` does real work, so the loop may overlap it with the previous commit."""
        return cls.prepare is not Processor.prepare
