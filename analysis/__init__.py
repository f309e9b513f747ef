"""Offline analysis of files (`emotion analyze`): videos, images, folders and globs at full speed.

The files go through the live pipeline's own code, not a copy of it: detection, tracking and the
model's framing (`shared.frame_faces`), the model runtime (`shared.model_runtime.EmotionModel`) and
the per-track smoothing (`shared.smoothing`). What is new here is only how frames arrive (read from
files as fast as the machine allows instead of paced by a camera) and where results go (rows,
an annotated copy with a report, or a session in the event store).

    inputs.py    PATH arguments -> videos and image sets, and their frames
    workers.py   face finding in one process per core (each reads the inputs itself)
    pipeline.py  tracking, batched classification and smoothing, the sinks, in frame order
    rows.py      one row per face per frame, written as CSV, JSON lines or Parquet
    annotate.py  the video (or images) with boxes, track ids and labels drawn
    report.py    the three charts (emotions over time, shares, per-track timeline) as HTML and PNG
    store.py     the results as a session of the event store (the dashboard's Sessions page)
    progress.py  the progress bar on a terminal
    run.py       the entry point: a request in, a summary out
"""
