"""The summary report next to an annotated output: the original project's three charts.

1. emotions over time: the mean probability of each emotion per time bucket of the video;
2. share of each emotion: how many faces got each label;
3. per-track timeline: one row per track, coloured by its smoothed label in each bucket.

As HTML (the dashboard's own plotly figures, plotly.js inlined so the file opens offline) and as PNG
(drawn with OpenCV, so nothing is downloaded at run time: no browser, no kaleido). What is kept while
the analysis runs is bounded: the time buckets double in width whenever there would be more than
`MAX_BUCKETS`, and the timeline shows the `MAX_TRACKS` tracks with the most faces.

Images have no time: an analysis of images only puts image numbers on the time axis; when videos and
images are mixed, the time charts show the videos.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from analysis.pipeline import FrameResult
from shared.emotions import EMOTIONS, NUM_EMOTIONS, color_bgr

MAX_BUCKETS = 240
MAX_TRACKS = 30
FIRST_BUCKET_S = 0.5
FONT = cv2.FONT_HERSHEY_SIMPLEX
GRID, INK, MUTED = (228, 231, 235), (40, 41, 51), (120, 126, 135)
FILES = {"html": "report.html", "over_time": "emotions-over-time.png", "shares": "emotion-shares.png",
         "timeline": "track-timeline.png"}


@dataclass
class _Track:
    name: str
    first: float
    faces: int = 0
    buckets: dict[int, np.ndarray] = field(default_factory=dict)  # bucket -> smoothed-label counts


class ReportData:
    """A sink that keeps what the charts need, in bounded memory."""

    def __init__(self) -> None:
        self.counts = np.zeros(NUM_EMOTIONS, np.int64)
        self.width = FIRST_BUCKET_S  # seconds of video (or images) per bucket
        self.sums: dict[int, np.ndarray] = {}  # bucket -> 7 probability sums and the face count
        self.tracks: dict[tuple[str, int], _Track] = {}
        self.unit = "seconds into the video"
        self._mode: str | None = None  # "video" or "images": what the time axis counts

    def add(self, result: FrameResult) -> None:
        frame = result.frame
        for event in result.events:
            self.counts[EMOTIONS.index(event.label)] += 1
        if not result.events:
            return
        is_video = frame.time_ms is not None
        if self._mode is None or (is_video and self._mode == "images"):  # videos take the time axis from images
            self._mode = "video" if is_video else "images"
            self.sums, self.tracks = {}, {}
            self.width = FIRST_BUCKET_S if is_video else 1.0
            self.unit = "seconds into the video" if is_video else "image number"
        if self._mode == "video" and not is_video:
            return
        at = frame.time_ms / 1000 if is_video else float(frame.index)
        while at / self.width >= MAX_BUCKETS:
            self._coarsen()
        bucket = int(at / self.width)
        sums = self.sums.setdefault(bucket, np.zeros(NUM_EMOTIONS + 1))
        for event in result.events:
            sums[:NUM_EMOTIONS] += event.probabilities
            sums[NUM_EMOTIONS] += 1
            key = (result.input.camera_id, event.track_id)
            track = self.tracks.get(key)
            if track is None:
                track = self.tracks[key] = _Track(f"{result.input.camera_id} #{event.track_id}", at)
            track.faces += 1
            track.buckets.setdefault(bucket, np.zeros(NUM_EMOTIONS, np.int64))[
                EMOTIONS.index(event.smoothed_label)] += 1

    def _coarsen(self) -> None:
        """Twice as wide buckets: merge each pair."""
        self.width *= 2
        self.sums = _merge_pairs(self.sums)
        for track in self.tracks.values():
            track.buckets = _merge_pairs(track.buckets)

    def close(self) -> None:
        pass

    # --- what the charts draw ----------------------------------------------------------------

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket start times, mean probabilities (buckets x 7)), buckets without faces left out."""
        order = sorted(self.sums)
        times = np.array([b * self.width for b in order], np.float64)
        means = np.array([self.sums[b][:NUM_EMOTIONS] / self.sums[b][NUM_EMOTIONS] for b in order]).reshape(-1, NUM_EMOTIONS)
        return times, means

    def shown_tracks(self) -> list[_Track]:
        """The tracks with most faces (at most MAX_TRACKS), in order of first appearance."""
        busiest = sorted(self.tracks.values(), key=lambda t: -t.faces)[:MAX_TRACKS]
        return sorted(busiest, key=lambda t: t.first)

    def timeline(self, track: _Track) -> list[tuple[float, str, float]]:
        """(bucket start, dominant smoothed label, its share of the bucket's faces) per bucket of a track."""
        rows = []
        for bucket in sorted(track.buckets):
            counts = track.buckets[bucket]
            best = int(np.argmax(counts))
            rows.append((bucket * self.width, EMOTIONS[best], float(counts[best] / counts.sum())))
        return rows


def _merge_pairs(buckets: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    merged: dict[int, np.ndarray] = {}
    for bucket, values in buckets.items():
        if bucket // 2 in merged:
            merged[bucket // 2] = merged[bucket // 2] + values
        else:
            merged[bucket // 2] = values.copy()
    return merged


# --- HTML ----------------------------------------------------------------------------------------

def _figures(data: ReportData):
    import pandas as pd

    from services.dashboard.charts import probabilities_figure, shares_figure, timeline_figure

    times, means = data.means()
    frame = pd.DataFrame(means, columns=[f"p_{e}" for e in EMOTIONS]).assign(bucket=times)
    over_time = probabilities_figure(frame, f"Emotions over time (mean probability per {data.width:g}-unit bucket)")
    over_time.update_xaxes(title_text=data.unit)
    counts = pd.DataFrame({"label": list(EMOTIONS), "count": data.counts})
    counts = counts[counts["count"] > 0]
    shares = shares_figure(counts.assign(share=counts["count"] / max(1, counts["count"].sum())), "Share of each emotion")
    timeline = timeline_figure()
    tracks = data.shown_tracks()
    for trace, emotion in zip(timeline.data, EMOTIONS):
        points = [(start, track.name, share) for track in tracks for start, label, share in data.timeline(track)
                  if label == emotion]
        trace.x, trace.y, trace.customdata = ([p[i] for p in points] for i in range(3))
        trace.hovertemplate = "%{y}<br>%{x}<br>" + emotion + " (smoothed) in %{customdata:.0%} of its faces<extra></extra>"
    timeline.update_layout(title=dict(text="Per-track timeline (smoothed label)"), height=max(320, 60 + 22 * len(tracks)))
    timeline.update_xaxes(type="linear", title_text=data.unit)
    return over_time, shares, timeline


def write_html(data: ReportData, path: Path, title: str, facts: dict[str, str]) -> Path:
    figures = _figures(data)
    parts = [figure.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
             for i, figure in enumerate(figures)]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#1f2933}th{text-align:left;"
            "padding-right:16px;color:#52606d}section{margin:18px 0}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{rows}</table>"
            + "".join(f"<section>{part}</section>" for part in parts) + "</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


# --- PNG (OpenCV drawing) ------------------------------------------------------------------------

def _canvas(width: int, height: int, title: str) -> np.ndarray:
    canvas = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(canvas, title, (16, 28), FONT, 0.6, INK, 1, cv2.LINE_AA)
    return canvas


def _text(canvas, text: str, x: int, y: int, colour=MUTED, scale: float = 0.42) -> None:
    cv2.putText(canvas, text, (int(x), int(y)), FONT, scale, colour, 1, cv2.LINE_AA)


def _nice_step(span: float, ticks: int = 6) -> float:
    """A step of 1, 2 or 5 times a power of ten that cuts `span` into at most about `ticks` parts."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _time_axis(canvas, left: int, right: int, bottom: int, span: float, unit: str) -> None:
    step = _nice_step(span)
    for value in np.arange(0, span + 1e-9, step):
        x = left + (right - left) * value / span
        cv2.line(canvas, (int(x), bottom), (int(x), bottom + 4), MUTED, 1)
        _text(canvas, f"{value:g}", x - 8, bottom + 18)
    _text(canvas, unit, (left + right) / 2 - 60, bottom + 36)


def _save(canvas: np.ndarray, path: Path) -> Path:
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cannot write {path}")
    return path


def png_over_time(data: ReportData, path: Path) -> Path:
    width, height, left, right, top, bottom = 960, 440, 60, 820, 50, 380
    canvas = _canvas(width, height, "Emotions over time (mean probability)")
    for i in range(6):
        y = int(bottom - (bottom - top) * i / 5)
        cv2.line(canvas, (left, y), (right, y), GRID, 1)
        _text(canvas, f"{i * 20}%", 14, y + 4)
    times, means = data.means()
    span = float(times[-1] + data.width) if len(times) else 1.0
    if len(times):
        xs = left + (right - left) * (times + data.width / 2) / span
        for k, emotion in enumerate(EMOTIONS):
            ys = bottom - (bottom - top) * means[:, k]
            points = np.stack([xs, ys], axis=1).round().astype(np.int32)
            if len(points) > 1:
                cv2.polylines(canvas, [points], False, color_bgr(emotion), 2, cv2.LINE_AA)
            else:
                cv2.circle(canvas, tuple(points[0]), 4, color_bgr(emotion), -1, cv2.LINE_AA)
    else:
        _text(canvas, "no faces found", (left + right) / 2 - 50, (top + bottom) / 2, INK, 0.6)
    for k, emotion in enumerate(EMOTIONS):
        y = top + 10 + 24 * k
        cv2.rectangle(canvas, (right + 20, y - 10), (right + 34, y + 2), color_bgr(emotion), -1)
        _text(canvas, emotion, right + 42, y, INK, 0.45)
    _time_axis(canvas, left, right, bottom, span, data.unit)
    return _save(canvas, path)


def png_shares(data: ReportData, path: Path) -> Path:
    width, left, right, top, row = 760, 110, 620, 56, 40
    canvas = _canvas(width, top + row * NUM_EMOTIONS + 20, f"Share of each emotion ({int(data.counts.sum()):,} faces)")
    total = max(1, int(data.counts.sum()))
    for k, emotion in enumerate(EMOTIONS):
        y = top + row * k
        share = data.counts[k] / total
        _text(canvas, emotion, 16, y + 22, INK, 0.5)
        cv2.rectangle(canvas, (left, y + 6), (right, y + 30), GRID, -1)
        if share > 0:
            cv2.rectangle(canvas, (left, y + 6), (left + max(2, int((right - left) * share)), y + 30),
                          color_bgr(emotion), -1)
        _text(canvas, f"{share:.0%}  ({int(data.counts[k]):,})", right + 12, y + 23, INK, 0.5)
    return _save(canvas, path)


def png_timeline(data: ReportData, path: Path) -> Path:
    tracks = data.shown_tracks()
    width, left, right, top, row = 960, 190, 940, 50, 22
    bottom = top + row * max(1, len(tracks))
    canvas = _canvas(width, bottom + 50, "Per-track timeline (smoothed label)")
    spans = [start for track in tracks for start, _, _ in data.timeline(track)]
    span = (max(spans) + data.width) if spans else 1.0
    for i, track in enumerate(tracks):
        y = top + row * i
        _text(canvas, track.name[:26], 12, y + 15, INK, 0.42)
        cv2.line(canvas, (left, y + row - 1), (right, y + row - 1), GRID, 1)
        for start, label, _share in data.timeline(track):
            x0 = int(left + (right - left) * start / span)
            x1 = max(x0 + 2, int(left + (right - left) * (start + data.width) / span))
            cv2.rectangle(canvas, (x0, y + 3), (x1, y + row - 4), color_bgr(label), -1)
    if not tracks:
        _text(canvas, "no faces found", (left + right) / 2 - 50, top + 14, INK, 0.6)
    _time_axis(canvas, left, right, bottom, span, data.unit)
    return _save(canvas, path)


def warm_up() -> None:
    """Build (and discard) the report's figures once: the first plotly figure of a process costs over a
    second of imports and validator set-up, which `emotion analyze` pays on a thread while its workers
    start instead of after the last frame."""
    for figure in _figures(ReportData()):
        figure.to_html(full_html=False, include_plotlyjs=False)


def write_report(data: ReportData, prefix: str, title: str, facts: dict[str, str]) -> dict[str, str]:
    """Every report file at `prefix` + its name; returns their paths by kind."""
    paths = {kind: Path(prefix + name) for kind, name in FILES.items()}
    write_html(data, paths["html"], title, facts)
    png_over_time(data, paths["over_time"])
    png_shares(data, paths["shares"])
    png_timeline(data, paths["timeline"])
    return {kind: str(path) for kind, path in paths.items()}
