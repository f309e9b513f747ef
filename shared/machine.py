"""What machine a measurement or a training stretch ran on, in one line."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine() -> str:
    """e.g. "2-core AMD EPYC (family 25 model 17, avx512)": VMs often show only a brand name, and two
    machines of the same name differed by 2x in inference speed here, so the family/model go in too."""
    model = platform.processor() or platform.machine()
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
            if not line.strip():
                break  # the first processor is enough
    except OSError:
        pass
    model = info.get("model name", model)
    details = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info and "model" in info else []
    if info.get("flags"):
        details.append("avx512" if "avx512f" in info["flags"].split() else "no avx512")
    return f"{os.cpu_count()}-core {model}" + (f" ({', '.join(details)})" if details else "")
