"""The error a service's entry point raises for what a user can fix before it can run.

A source that does not open, a store that does not answer, a dashboard bound beyond this machine
without a token: `services/<name>/run.py` raises `StartupError`, and `emotion <service>` and
`python -m services.<name>` print it as one line and exit with code 2.
"""

from __future__ import annotations


class StartupError(RuntimeError):
    """A service cannot start, for a reason its message tells the user how to fix."""
