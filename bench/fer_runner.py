"""Runs the `fer` package's video analysis inside fer's own virtualenv (not ours): one JSON line out.

    <fer venv>/bin/python bench/fer_runner.py VIDEO OUTDIR [--annotate]

`bench/analyze_bench.py` calls it as a subprocess; it imports nothing of this project. fer is used as
its README shows (`FER(mtcnn=False)`: OpenCV's Haar cascade, no PyTorch; `Video(...).analyze(detector)`),
with `--annotate` writing its annotated video as it does by default, and its CSV (`data.csv`, in the
current directory, which the bench sets to OUTDIR). Two shims, which only make it run headless and
can only make it faster: OpenCV's highgui calls that fer makes unconditionally (`waitKey` per frame,
`destroyAllWindows`) are no-ops, as a headless OpenCV cannot open a window anyway.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    video, outdir = argv[0], argv[1]
    annotate = "--annotate" in argv[2:]
    started = time.perf_counter()
    import cv2

    cv2.waitKey = lambda *args: -1
    cv2.destroyAllWindows = lambda *args: None
    from fer.classes import Video
    from fer.fer import FER

    detector = FER(mtcnn=False)
    loaded = time.perf_counter()
    rows = Video(video, outdir=outdir).analyze(detector, display=False, output="csv", save_frames=False,
                                               save_video=annotate, annotate_frames=annotate, zip_images=False)
    analysed = time.perf_counter()
    capture = cv2.VideoCapture(video)
    frames = 0
    while capture.grab():
        frames += 1
    faces = sum(1 for row in rows for key in row if key.startswith("box"))
    print(json.dumps({"frames": frames, "faces": faces, "frames_with_faces": len(rows),
                      "startup_s": round(loaded - started, 3), "seconds": round(analysed - loaded, 3),
                      "frames_per_s": round(frames / (analysed - loaded), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
