"""Copy the screenshots of the latest headless-browser run into docs/screenshots/ (the README's).

    python -m pytest tests/test_dashboard_browser.py && python scripts/copy_screenshots.py

tests/test_dashboard_browser.py saves one PNG per page it checks under test-artifacts/dashboard/;
the ones the documentation shows are copied as docs/screenshots/dashboard-<name>.png. Exit code 1
when one of them is missing (the browser tests did not run, or not all passed).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
TARGET = ROOT / "docs" / "screenshots"
SHOWN = ("live-with-events", "health-live", "analyze-astronaut", "training-queued", "page-history", "sessions-empty",
         "sessions-report", "history")


def main() -> int:
    TARGET.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in SHOWN:
        source = ARTIFACTS / f"{name}.png"
        if not source.is_file():
            missing.append(source.name)
            continue
        shutil.copy(source, TARGET / f"dashboard-{name}.png")
        print(f"{source.relative_to(ROOT)} -> {(TARGET / f'dashboard-{name}.png').relative_to(ROOT)}")
    if missing:
        print(f"copy_screenshots: not in {ARTIFACTS.relative_to(ROOT)}: {', '.join(missing)} "
              "(run tests/test_dashboard_browser.py first)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
