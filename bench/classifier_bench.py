"""Faces per second of one classifier replica through the real service loop vs the bare LiteRT runtime.

Service: the faces stream (of an isolated key prefix) is pre-filled with N real FaceMessages, then
`services.classifier.run.build_worker(settings, client).run(burst=True)` drains it; the time of that
call is the measurement (model loading excluded, everything the loop does per batch included:
XREADGROUP, validation, crop stacking, inference, track-state MGET/SET, event encoding, MULTI/EXEC
publish + XACK). Events out must equal faces in, or the run is an error.

Bare: `EmotionModel.predict` on the same crops, in chunks of the same batch size, same threads.

Steady state, not start-up or tail effects: the face count is rounded up to a multiple of the batch
size (so no partial batch waits `batch_wait_ms` to fill at the end) and the loop stops after the
last face (`max_entries`) instead of on an empty blocking read. Both matter because Redis answers a
BLOCK timeout only at its next server tick (100 ms at the default hz 10), whatever milliseconds
were asked for.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from bench.common import (face_crops, face_entries, format_table, isolated, median,
                          serving_model_dir, xadd_all)
from shared.model_runtime import EmotionModel, read_metadata
from shared.settings import Settings
from shared.streams import Keys


class BenchError(RuntimeError):
    """A benchmark whose result would be meaningless (faces lost, dead letters)."""


def _service_run(settings: Settings, client, entries: list[dict[str, bytes]], batch: int, threads: int) -> float:
    from services.classifier.run import build_worker

    keys = Keys.of(settings)  # one replica's worker over shard 0 (build_worker's default)
    client.delete(keys.faces, keys.events, keys.dead(keys.faces), keys.stats("classifier"))
    for key in client.scan_iter(match=f"{keys.prefix}:{keys.tag}:track:*"):
        client.delete(key)
    xadd_all(client, keys.faces, entries)
    run_settings = settings.model_copy(update={
        "classifier": settings.classifier.model_copy(update={"batch_size": batch, "threads": threads})})
    worker = build_worker(run_settings, client, consumer=f"bench-b{batch}-t{threads}")
    started = time.perf_counter()
    worker.run(max_entries=len(entries), burst=True)
    elapsed = time.perf_counter() - started
    events = client.xlen(keys.events)
    dead = client.xlen(keys.dead(keys.faces))
    if events != len(entries) or dead:
        raise BenchError(f"classifier service: {len(entries)} faces in, {events} events out, {dead} dead letters")
    return elapsed


def _bare_run(model: EmotionModel, crops: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(crops), batch):
        model.predict(crops[start:start + batch])
    return time.perf_counter() - started


def run_classifier_bench(settings: Settings, client, *, batch_sizes: list[int], threads: list[int],
                         faces: int = 2000, repeats: int = 3, fer_path: Path | None = None) -> dict:
    logging.getLogger("shared.worker").setLevel(logging.WARNING)
    rows = []
    with isolated(settings, client) as bench_settings:
        model_dir = serving_model_dir(bench_settings, client)
        metadata = read_metadata(model_dir)
        most = max(-(-faces // b) * b for b in batch_sizes)
        all_crops, crop_source = face_crops(most, metadata.preprocess, fer_path)
        all_entries = face_entries(all_crops, metadata.preprocess)
        for thread_count in threads:
            model = EmotionModel(model_dir, thread_count)
            for batch in batch_sizes:
                count = -(-faces // batch) * batch  # whole batches only
                crops, entries = all_crops[:count], all_entries[:count]
                _bare_run(model, crops[:batch * 2], batch)  # warm up: tensor allocation at this batch size
                service_s, bare_s = [], []
                for _ in range(repeats):  # interleaved, so a burst of machine load hits both alike
                    service_s.append(_service_run(bench_settings, client, entries, batch, thread_count))
                    bare_s.append(_bare_run(model, crops, batch))
                service_rate = count / median(service_s)
                bare_rate = count / median(bare_s)
                rows.append({"batch": batch, "threads": thread_count, "faces": count, "repeats": repeats,
                             "service_faces_per_s": round(service_rate, 1), "bare_faces_per_s": round(bare_rate, 1),
                             "ratio": round(service_rate / bare_rate, 3),
                             "service_runs_faces_per_s": [round(count / s, 1) for s in service_s],
                             "bare_runs_faces_per_s": [round(count / s, 1) for s in bare_s],
                             "events": count, "lost": 0})
    # The headline numbers are those of the configuration a replica runs with (its settings).
    default = next((r for r in rows if r["batch"] == settings.classifier.batch_size
                    and r["threads"] == settings.classifier.threads), rows[0])
    return {
        "benchmark": "classifier",
        "model_version": metadata.version,
        "model_architecture": metadata.architecture,
        "crops": crop_source,
        "faces": default["faces"],
        "events": default["events"],
        "lost": 0,
        "default_config": {"batch": default["batch"], "threads": default["threads"],
                           "overlap_batches": settings.worker.overlap_batches, "flip_tta": settings.classifier.flip_tta},
        "service_faces_per_s": default["service_faces_per_s"],
        "bare_faces_per_s": default["bare_faces_per_s"],
        "ratio": default["ratio"],
        "target_ratio": 0.8,
        "table": rows,
    }


def table(result: dict) -> str:
    rows = [(r["batch"], r["threads"], r["service_faces_per_s"], r["bare_faces_per_s"], f"{r['ratio']:.2f}")
            for r in result["table"]]
    config = result["default_config"]
    head = (f"classifier {result['model_version']} ({result['model_architecture']}), about {result['faces']} faces "
            f"(whole batches) from {result['crops']}; medians of {result['table'][0]['repeats']} runs; "
            f"loop {'overlapped' if config['overlap_batches'] else 'plain'}"
            f"{', flip TTA' if config['flip_tta'] else ''}")
    return head + "\n" + format_table(("batch", "threads", "service faces/s", "bare faces/s", "ratio"), rows)
