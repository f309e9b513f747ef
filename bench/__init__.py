"""Benchmarks of the platform: classifier service vs bare runtime, detector, end to end, scaling, training.

Each module has a `run_*` function returning a plain dict (what `emotion bench ... --json` prints on
its last line) and formats a short table for people. Results and how to read them: bench/README.md.
"""
