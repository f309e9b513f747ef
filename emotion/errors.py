"""The one exception type of the CLI: a mistake the user can fix, printed as one line (exit code 2)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; `emotion.cli.main` prints it as one line and exits with code 2."""
