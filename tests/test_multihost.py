"""Services on separate hosts: each in a network namespace of its own, joined by veth pairs to a bridge
(in a namespace of its own too, so the test machine's own network is untouched), against one Redis
and one PostgreSQL on a further "host". The test starts its own redis-server and PostgreSQL there,
listening on that host's address only; the services reach them over the bridge like remote servers.

Cutting one classifier host's link in the middle of the run (`ip link set … down` inside it) must
move the work it held (read, not acknowledged) to the other classifiers: after the capture ends and
everything drained, every face the detector published has exactly one stored event.

It needs root and `ip netns` (iproute2); without them it is skipped, with the reason.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis

from shared.stream_state import group_state
from shared.streams import CLASSIFIER_GROUP, RECORDER_GROUP, Keys
from tests.proc_utils import Proc, service_env

SUBNET = "10.213.0"  # inside the test's own namespaces only
DB_ADDRESS = f"{SUBNET}.2"
REDIS_PORT, POSTGRES_PORT = 6390, 5433
FRAMES = 90
TIMEOUT_S = 150.0
HOSTS = ("db", "capture", "detector", "classifier0", "classifier1", "classifier2", "recorder")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


def postgres_binary(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


class Network:
    """Namespaces "hosts" on one bridge: host i has address SUBNET.(i+2) on its interface `eth0`."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:4]
        self.switch = f"em{self.tag}-sw"
        self.names: dict[str, str] = {}
        self.addresses: dict[str, str] = {}

    def ns(self, host: str) -> str:
        return self.names[host]

    def create(self, hosts) -> None:
        sh("ip", "netns", "add", self.switch)
        sh("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        for index, host in enumerate(hosts):
            name, address = f"em{self.tag}-{index}", f"{SUBNET}.{index + 2}"
            self.names[host], self.addresses[host] = name, address
            sh("ip", "netns", "add", name)
            inner, outer = f"e{self.tag}{index}i", f"e{self.tag}{index}o"
            sh("ip", "link", "add", inner, "netns", name, "type", "veth", "peer", "name", outer, "netns", self.switch)
            sh("ip", "netns", "exec", self.switch, "ip", "link", "set", outer, "master", "br0", "up")
            sh("ip", "netns", "exec", name, "ip", "link", "set", inner, "name", "eth0")
            sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "netns", "exec", name, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    def link(self, host: str, up: bool) -> None:
        sh("ip", "netns", "exec", self.ns(host), "ip", "link", "set", "eth0", "up" if up else "down")

    def destroy(self) -> None:
        for name in [*self.names.values(), self.switch]:
            sh("ip", "netns", "del", name, check=False)  # removes the veth ends inside it too


@pytest.fixture
def network():
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces are made with `ip netns add`")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`)")
    probe = f"em{uuid.uuid4().hex[:4]}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
    sh("ip", "netns", "del", probe)
    net = Network()
    try:
        net.create(HOSTS)
        yield net
    finally:
        net.destroy()


class Host:
    """Processes started inside one namespace (`ip netns exec` execs them: the pid is theirs)."""

    def __init__(self, net: Network, logs: Path) -> None:
        self.net, self.logs = net, logs
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, host: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(["ip", "netns", "exec", self.net.ns(host), *args], env, self.logs / f"{name}.log")
        self.procs[name] = proc
        return proc

    def tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{proc.log_path.read_text(errors='replace')[-1500:]}"
                         for name, proc in self.procs.items())


def wait_for(condition, timeout: float, what: str, hosts: Host, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        died = {name: p.popen.returncode for name, p in hosts.procs.items() if not p.alive() and name != "capture"}
        assert not died, f"exited while waiting for {what}: {died}\n{hosts.tails()}"
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}\n{hosts.tails()}")


def pending_of(client: redis.Redis, stream: str, consumer_prefix: str) -> int:
    try:
        consumers = client.xinfo_consumers(stream, CLASSIFIER_GROUP)
    except redis.ResponseError:
        return 0
    return sum(int(c["pending"]) for c in consumers if c["name"].decode().startswith(consumer_prefix))


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 120)
def test_cutting_a_classifier_hosts_link_moves_its_work_to_the_others(network, tmp_path, model_dir):
    import psycopg

    initdb, postgres = postgres_binary("initdb"), postgres_binary("postgres")
    if not (initdb and postgres and shutil.which("redis-server") and shutil.which("runuser")):
        pytest.skip("needs redis-server and PostgreSQL's initdb/postgres binaries")
    # PostgreSQL refuses to run as root: its files live where the postgres user can reach them
    pg_root = Path(tempfile.mkdtemp(prefix="em-multihost-pg-"))
    sockets = pg_root / "sockets"
    sockets.mkdir()
    shutil.chown(pg_root, "postgres")
    shutil.chown(sockets, "postgres")
    hosts = Host(network, tmp_path / "logs")
    try:
        sh("runuser", "-u", "postgres", "--", initdb, "-D", str(pg_root / "data"), "-A", "trust", "-U", "postgres")
        with open(pg_root / "data" / "pg_hba.conf", "a") as hba:  # the service hosts, over the bridge
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        env_db = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        hosts.start("postgres", "db", ["runuser", "-u", "postgres", "--", postgres, "-D", str(pg_root / "data"),
                                       "-p", str(POSTGRES_PORT), "-c", f"listen_addresses={DB_ADDRESS}",
                                       "-k", str(sockets), "-c", "fsync=off"], env_db)
        hosts.start("redis", "db", ["redis-server", "--bind", DB_ADDRESS, "--port", str(REDIS_PORT), "--save", "",
                                    "--appendonly", "no", "--protected-mode", "no",
                                    "--unixsocket", str(tmp_path / "redis.sock")], env_db)
        # The test itself watches through the unix sockets (the filesystem is shared; the network is not).
        observer = redis.Redis(unix_socket_path=str(tmp_path / "redis.sock"))

        def redis_up():
            try:
                return observer.ping()
            except (redis.ConnectionError, FileNotFoundError):
                return False

        def postgres_up():
            try:
                psycopg.connect(host=str(sockets), port=POSTGRES_PORT, user="postgres", dbname="postgres",
                                connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_for(redis_up, 20, "redis on the db host", hosts)
        wait_for(postgres_up, 30, "postgresql on the db host", hosts)

        prefix = "mh"
        keys = Keys(prefix)
        env = service_env(f"redis://{DB_ADDRESS}:{REDIS_PORT}/0", prefix, model_dir, tmp_path / "registry",
                          EMOTION_DATABASE_URL=f"postgresql+psycopg://postgres@{DB_ADDRESS}:{POSTGRES_PORT}/postgres",
                          EMOTION_WORKER__CLAIM_IDLE_MS="2000", EMOTION_WORKER__CLAIM_INTERVAL_S="0.5",
                          EMOTION_WORKER__BLOCK_MS="100")
        emotion = [sys.executable, "-m", "emotion"]
        hosts.start("recorder", "recorder", [*emotion, "recorder"], env)
        hosts.start("detector", "detector", [*emotion, "detector"], env)
        for index in range(3):
            # classifier0 waits longer to fill bigger batches, so it is likely to hold read work when cut
            extra = {"EMOTION_CLASSIFIER__BATCH_SIZE": "64", "EMOTION_CLASSIFIER__BATCH_WAIT_MS": "400"} \
                if index == 0 else {}
            hosts.start(f"classifier{index}", f"classifier{index}", [*emotion, "classifier"], {**env, **extra})

        def services_beating():
            beats = {key.decode().split(":")[2] for key in observer.scan_iter(match=keys.heartbeat_pattern())}
            return {"detector", "classifier", "recorder"} <= beats and \
                len(list(observer.scan_iter(match=keys.heartbeat_pattern("classifier")))) == 3

        wait_for(services_beating, 90, "every service's heartbeat", hosts)
        hosts.start("capture", "capture", [*emotion, "capture", "--source", "demo", "--camera-id", "cam0",
                                           "--fps", "15", "--max-frames", str(FRAMES)], env)

        # classifier0's consumer name starts with "classifier-<its host name>": all share the machine's
        # hostname, so find its consumer by the pid in its heartbeat.
        cut_pid = hosts.procs["classifier0"].pid

        def consumer_of(pid: int) -> str | None:
            for key in observer.scan_iter(match=keys.heartbeat_pattern("classifier")):
                if f"-{pid}-" in key.decode():
                    return key.decode().rsplit(":", 1)[1]
            return None

        cut_consumer = wait_for(lambda: consumer_of(cut_pid), 30, "classifier0's heartbeat", hosts)
        held = 0
        for _ in range(40):  # cut while it holds read, unacknowledged faces
            wait_for(lambda: pending_of(observer, keys.faces, cut_consumer) > 0, 60,
                     "classifier0 holding faces", hosts, every=0.01)
            network.link("classifier0", up=False)
            time.sleep(0.3)
            held = pending_of(observer, keys.faces, cut_consumer)
            if held:
                break
            network.link("classifier0", up=True)  # it acknowledged just before the cut: try again
        assert held > 0, "classifier0 never held faces at the moment its link was cut"

        wait_for(lambda: not hosts.procs["capture"].alive(), 120, "the capture to end", hosts, every=0.5)

        def drained():
            faces, events = group_state(observer, keys.faces, CLASSIFIER_GROUP), \
                group_state(observer, keys.events, RECORDER_GROUP)
            return faces.exists and faces.backlog == 0 and events.exists and events.backlog == 0

        wait_for(drained, TIMEOUT_S, "faces and events to drain (classifier0's faces reclaimed)", hosts, every=0.5)
        faces_published = int(observer.hget(keys.stats("detector"), "entries_out") or 0)
        with psycopg.connect(host=str(sockets), port=POSTGRES_PORT, user="postgres", dbname="postgres") as conn:
            rows, distinct = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        reclaimed = 0
        for key in observer.scan_iter(match=keys.heartbeat_pattern("classifier")):
            beat = json.loads(observer.get(key) or b"{}")
            if beat.get("pid") != cut_pid:
                reclaimed += int(beat.get("reclaimed", 0))

        print(f"faces={faces_published} rows={rows} held_when_cut={held} reclaimed_by_others={reclaimed}")
        assert faces_published > 0
        assert rows == distinct == faces_published, (rows, distinct, faces_published, hosts.tails())
        assert pending_of(observer, keys.faces, cut_consumer) == 0
        assert reclaimed >= held, f"the other classifiers reclaimed {reclaimed} of the {held} faces classifier0 held"
    finally:
        for name, proc in hosts.procs.items():  # the services first, then Redis and PostgreSQL cleanly
            if name not in ("redis", "postgres"):
                proc.kill9()
        for name in ("redis", "postgres"):
            if name in hosts.procs:
                hosts.procs[name].stop(timeout=15)
        shutil.rmtree(pg_root, ignore_errors=True)
