"""One row per face per frame, streamed to CSV, JSON lines or Parquet (the format is the file's suffix).

Rows are written as frames are finished, never collected, so a long video costs no more memory than
a short one. Columns (the probabilities in FER order, named as in the event store and `emotion export`):

    source, frame, time_s, x, y, w, h, detection_confidence, track_id, p_angry … p_neutral,
    label, confidence, top2, smoothed_label

`time_s` is the face's position in its video (empty for an image); `top2` is the two most likely
labels, best first, as `happy|neutral`; `confidence` is the probability of `label`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from analysis.pipeline import FrameResult
from shared.store.schema import PROB_COLUMNS

COLUMNS = ("source", "frame", "time_s", "x", "y", "w", "h", "detection_confidence", "track_id", *PROB_COLUMNS,
           "label", "confidence", "top2", "smoothed_label")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
PARQUET_ROW_GROUP = 10_000


def output_format(path: Path) -> str:
    """csv, jsonl or parquet from the suffix; ValueError for anything else."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {path}: the file must end in {', '.join(FORMATS)} (the format follows the suffix)")
    return fmt


def rows_of(result: FrameResult) -> list[dict]:
    frame = result.frame
    time_s = None if frame.time_ms is None else round(frame.time_ms / 1000, 3)
    rows = []
    for event in result.events:
        box = event.bbox
        row = {"source": frame.path, "frame": frame.index, "time_s": time_s, "x": box.x, "y": box.y, "w": box.w,
               "h": box.h, "detection_confidence": event.detection_confidence, "track_id": event.track_id}
        row.update(zip(PROB_COLUMNS, (round(p, 6) for p in event.probabilities)))
        row.update(label=event.label, confidence=round(event.confidence, 6), top2="|".join(event.top2),
                   smoothed_label=event.smoothed_label)
        rows.append(row)
    return rows


class RowWriter:
    """A sink writing `rows_of` every frame to `path`; counts the rows it wrote."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        self.rows = 0
        self._handle = None
        self._csv = None
        self._parquet = None
        self._pending: list[dict] = []
        if self.format == "csv":
            self._handle = open(self.path, "w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._handle, fieldnames=COLUMNS)
            self._csv.writeheader()
        elif self.format == "jsonl":
            self._handle = open(self.path, "w", encoding="utf-8")

    def add(self, result: FrameResult) -> None:
        if not result.events:
            return
        rows = rows_of(result)
        self.rows += len(rows)
        if self._csv is not None:
            self._csv.writerows(rows)
        elif self.format == "jsonl":
            self._handle.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            self._pending.extend(rows)
            if len(self._pending) >= PARQUET_ROW_GROUP:
                self._write_parquet()

    def _write_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self._pending, schema=_parquet_schema())
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table)
        self._pending = []

    def close(self) -> None:
        if self.format == "parquet":
            if self._pending or self._parquet is None:  # an analysis without faces still gives a file with columns
                self._write_parquet()
            self._parquet.close()
        elif self._handle is not None:
            self._handle.close()


def _parquet_schema():
    import pyarrow as pa

    types = {"source": pa.string(), "frame": pa.int64(), "time_s": pa.float64(), "x": pa.int32(), "y": pa.int32(),
             "w": pa.int32(), "h": pa.int32(), "detection_confidence": pa.float64(), "track_id": pa.int64(),
             "label": pa.string(), "confidence": pa.float64(), "top2": pa.string(), "smoothed_label": pa.string()}
    return pa.schema([(name, types.get(name, pa.float64())) for name in COLUMNS])
