"""Learning curves of a campaign as a PNG (OpenCV drawing: no plotting library in the install)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from trainer.recipes import CampaignState

WIDTH, HEIGHT = 900, 520
LEFT, RIGHT, TOP = 70, 30, 50
ACCURACY_BOTTOM, RATE_TOP, RATE_BOTTOM = 330, 380, 480
SERIES = (  # history field, legend, BGR colour
    ("val_top1", "PublicTest top-1", (200, 90, 20)),
    ("val_top1_flip", "PublicTest top-1, flip", (40, 160, 40)),
    ("accuracy", "training accuracy (augmented)", (60, 60, 220)),
)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _polyline(canvas, xs, ys, colour) -> None:
    points = np.stack([xs, ys], axis=1).round().astype(np.int32)
    cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)


def draw_curve(state: CampaignState, path: Path) -> Path:
    """Accuracy per epoch (top panel) and the learning rate (bottom), with cycle ends marked."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    total = max(state.recipe.total_epochs, 1)
    plot_w = WIDTH - LEFT - RIGHT

    def x_of(epoch: float) -> float:
        return LEFT + plot_w * epoch / total

    low, high = 0.2, 0.8
    def y_of(value: float) -> float:
        return ACCURACY_BOTTOM - (ACCURACY_BOTTOM - TOP) * (min(max(value, low), high) - low) / (high - low)

    title = f"{state.name}: {state.epochs_done} of {total} epochs"
    if state.best_epoch:
        title += f", best PublicTest {state.best_val_top1:.2%} at epoch {state.best_epoch}"
    cv2.putText(canvas, title, (LEFT, 28), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for value in np.arange(low, high + 1e-9, 0.1):
        y = int(y_of(value))
        cv2.line(canvas, (LEFT, y), (WIDTH - RIGHT, y), (225, 225, 225), 1)
        cv2.putText(canvas, f"{value:.0%}", (18, y + 4), FONT, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    for end in state.recipe.cycle_ends():
        x = int(x_of(end))
        cv2.line(canvas, (x, TOP), (x, RATE_BOTTOM), (200, 200, 200), 1)
    epochs = np.array([r.epoch for r in state.history], dtype=np.float64)
    if len(epochs):
        for offset, (field, legend, colour) in enumerate(SERIES):
            values = np.array([getattr(r, field) for r in state.history])
            if len(epochs) > 1:
                _polyline(canvas, x_of(epochs), np.array([y_of(v) for v in values]), colour)
            else:
                cv2.circle(canvas, (int(x_of(epochs[0])), int(y_of(values[0]))), 3, colour, -1)
            cv2.putText(canvas, legend, (LEFT + 10 + 250 * offset, ACCURACY_BOTTOM + 22), FONT, 0.42, colour, 1,
                        cv2.LINE_AA)
    positions = np.linspace(0, total, 400)
    rates = np.array([state.recipe.learning_rate(p) for p in positions])
    peak = max(rates.max(), 1e-12)
    _polyline(canvas, x_of(positions), RATE_BOTTOM - (RATE_BOTTOM - RATE_TOP) * rates / peak, (120, 120, 120))
    done = int(x_of(state.epochs_done))
    cv2.line(canvas, (done, RATE_TOP), (done, RATE_BOTTOM), (0, 0, 0), 1)
    cv2.putText(canvas, f"learning rate (peak {peak:.3g}); vertical lines: cycle ends", (LEFT, RATE_TOP - 8), FONT,
                0.42, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.putText(canvas, "epoch", (WIDTH // 2, HEIGHT - 12), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for epoch in range(0, total + 1, max(total // 10, 1)):
        cv2.putText(canvas, str(epoch), (int(x_of(epoch)) - 8, RATE_BOTTOM + 18), FONT, 0.4, (90, 90, 90), 1,
                    cv2.LINE_AA)
    path = Path(path)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cannot write {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    """python -m trainer.curves RUN_DIR OUT.png: redraw a campaign's curve (docs/training.md uses them)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.curves", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="campaign directory, e.g. models/accurate-v1")
    parser.add_argument("out", type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    draw_curve(CampaignState.read(args.run_dir), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
