"""Children that do not outlive their parent: `emotion up`'s services and `emotion analyze`'s workers."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def exit_with_parent(parent_pid: int) -> None:
    """Called in the child: the kernel sends it SIGTERM when its parent exits, even by `kill -9` (Linux
    only; elsewhere a no-op). A parent that died before the call was made is caught too."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)
