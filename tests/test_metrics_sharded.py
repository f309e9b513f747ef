"""The metrics of a sharded replica (shared/sharded.py with shared/metrics.py): one process, one
registry, one metrics port and one pair of probes, however many shard loops it runs on its threads.

Real Redis, real threads, the HTTP server on a free port; the processor is the small echo of
tests/sharded_utils.py. The same through real `emotion up` processes is tests/test_metrics_up.py.
"""

from __future__ import annotations

import json
import threading
import time

from shared.metrics import MetricsServer, ServiceMetrics
from shared.sharded import ShardedReplica
from shared.streams import Keys
from shared.worker import StreamWorker
from tests.conftest import fill_faces, make_faces
from tests.proc_utils import wait_for
from tests.metrics_utils import get, samples, value
from tests.sharded_utils import SETTINGS, Echo, echo_worker, holders, start


class Served:
    """A replica's metrics on their own port, as the services serve them."""

    def __init__(self, replica: ShardedReplica, liveness_s: float = 60.0) -> None:
        self.metrics = ServiceMetrics(replica.service, liveness_s=liveness_s)
        replica.use_metrics(self.metrics)
        self.server = MetricsServer(self.metrics, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self.server.port}"

    def text(self) -> str:
        return get(self.base + "/metrics")[1].decode()

    def probe(self, path: str) -> tuple[int, dict]:
        status, body = get(self.base + path)
        return status, json.loads(body)


def test_every_shard_loop_feeds_the_one_registry_of_its_process(redis_client):
    """Guards against one registry (or port) per shard loop: the per-shard series carry the shard's
    stream, the others are the sum over the shards, the lag of every shard is there, and the probes
    cover every loop of the process."""
    keys = Keys("t", 3)
    for shard in keys.all_shards():
        fill_faces(redis_client, shard.faces, make_faces(5 + shard.shard, camera=f"cam{shard.shard}"))
    replica = ShardedReplica(redis_client, keys, service="echo", make_worker=echo_worker(redis_client, keys),
                             settings=SETTINGS, consumer="r1", stream="faces", group="echo")
    served = Served(replica)
    thread = start(replica)
    try:
        wait_for(lambda: value(served.text(), "emotion_events_total") == 18, 20, what="18 events in /metrics")
        text = served.text()
        for shard in keys.all_shards():
            assert value(text, "emotion_entries_processed_total", stream=shard.faces) == 5 + shard.shard
            assert value(text, "emotion_consumer_group_lag", stream=shard.faces, group="echo") == 0
            assert value(text, "emotion_consumer_group_pending", stream=shard.faces, group="echo") == 0
        assert value(text, "emotion_shards_served") == 3
        # one process: its CPU is exported once, not once per shard
        assert len([name for name, _, _ in samples(text) if name == "process_cpu_seconds_total"]) == 1
        fill_faces(redis_client, keys.of_shard(2).faces, make_faces(4, camera="cam2"))  # counted at scrape time
        status, live = served.probe("/healthz")
        assert status == 200 and set(live["last_iteration_s"]) == {"echo", *(k.faces for k in keys.all_shards())}
        status, ready = served.probe("/readyz")
        assert status == 200 and ready["shards"] == [0, 1, 2] and ready["of_shards"] == 3
        assert ready["checks"] == {"loop": "ok", "redis": "ok", "downstream": "ok"}
    finally:
        replica.stop_event.set()
        thread.join(20)
        served.server.close()
    assert replica.code == 0


class Stuck(Echo):
    """Echo that hangs inside `handle` until released (a shard loop that stopped iterating)."""

    def __init__(self, out: str, release: threading.Event) -> None:
        super().__init__(out)
        self.release = release

    def handle(self, batch):
        self.release.wait(30)
        return super().handle(batch)


def test_one_stuck_shard_loop_fails_the_liveness_of_the_whole_process(redis_client):
    """A replica is healthy only while every shard loop it runs iterates: the others still beating
    must not hide one that hangs (a restart is what it needs)."""
    keys = Keys("t", 2)
    release = threading.Event()

    def make(shard: int, consumer: str) -> StreamWorker:
        shard_keys = keys.of_shard(shard)
        processor = Stuck(shard_keys.events, release) if shard == 1 else Echo(shard_keys.events)
        return StreamWorker(redis_client, processor, service="echo", stream=shard_keys.faces, group="echo",
                            keys=shard_keys, settings=SETTINGS, consumer=consumer)

    replica = ShardedReplica(redis_client, keys, service="echo", make_worker=make, settings=SETTINGS, consumer="r1",
                             stream="faces", group="echo")
    served = Served(replica, liveness_s=0.6)
    thread = start(replica)
    try:
        wait_for(lambda: served.probe("/healthz")[0] == 200 and len(served.probe("/healthz")[1]["last_iteration_s"])
                 == 3, 10, what="three loops beating")
        fill_faces(redis_client, keys.of_shard(1).faces, make_faces(2, camera="cam1"))
        wait_for(lambda: served.probe("/healthz")[0] == 503, 10, what="liveness failing")
        ages = served.probe("/healthz")[1]["last_iteration_s"]
        assert ages[keys.of_shard(1).faces] > 0.6
        assert ages[keys.of_shard(0).faces] < 0.6 and ages["echo"] < 0.6
        release.set()
        wait_for(lambda: served.probe("/healthz")[0] == 200, 10, what="alive again once it iterates")
    finally:
        release.set()
        replica.stop_event.set()
        thread.join(20)
        served.server.close()


def test_a_standby_detector_is_alive_and_ready_but_idle_and_a_handed_back_loop_is_forgotten(redis_client):
    """Leased replicas: `a` alone takes both shards; once `b` comes, `a` hands one back, and that
    loop's last beat must not fail a's liveness later on; `c`, a third, holds nothing and is alive,
    ready, idle (0 shards served), and still shows every shard's lag."""
    keys = Keys("t", 2)

    def leased(name: str) -> ShardedReplica:
        return ShardedReplica(redis_client, keys, service="echo", make_worker=echo_worker(redis_client, keys),
                              settings=SETTINGS, consumer=name, leases_ttl_ms=1500, stream="faces", group="echo")

    replicas = {name: leased(name) for name in ("a", "b", "c")}
    served = {name: Served(replica, liveness_s=1.0) for name, replica in replicas.items()}
    threads = {"a": start(replicas["a"])}
    try:
        wait_for(lambda: served["a"].probe("/readyz")[1].get("shards") == [0, 1], 20, what="a holding both shards")
        threads["b"] = start(replicas["b"])
        wait_for(lambda: sorted(map(str, holders(redis_client, keys).values())) == ["a", "b"], 20, what="one shard each")
        wait_for(lambda: len(served["a"].probe("/healthz")[1]["last_iteration_s"]) == 2, 10,
                 what="a's handed-back loop forgotten")
        threads["c"] = start(replicas["c"])
        wait_for(lambda: served["c"].probe("/readyz")[0] == 200, 20, what="the standby ready")
        time.sleep(1.2)  # longer than liveness_s: nothing stale may be left in a's probes
        assert served["a"].probe("/healthz")[0] == 200
        status, ready = served["c"].probe("/readyz")
        assert status == 200 and ready["standby"] is True and ready["shards"] == []
        assert ready["checks"]["leases"] == "ok"
        status, live = served["c"].probe("/healthz")
        assert status == 200 and set(live["last_iteration_s"]) == {"echo"} and live["standby"] is True
        fill_faces(redis_client, keys.of_shard(1).faces, make_faces(3, camera="cam1"))
        text = served["c"].text()
        assert value(text, "emotion_shards_served") == 0
        assert {labels["stream"] for name, labels, _ in samples(text) if name == "emotion_consumer_group_pending"} \
            == {keys.of_shard(0).faces, keys.of_shard(1).faces}
    finally:
        for replica in replicas.values():
            replica.stop_event.set()
        for thread in threads.values():
            thread.join(20)
        for one in served.values():
            one.server.close()
