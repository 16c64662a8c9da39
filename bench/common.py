"""What every benchmark shares: a description of the machine, a free port, the results folder."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """CPU model, cores, RAM, OS and Python: the `machine` field of every result file."""
    model = "unknown CPU"
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {mem_kb / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    gpu = ""
    try:  # NVML, when there is a GPU: its name belongs in every figure measured on it
        from loopline.train.gpu import read_samples

        samples = read_samples()
        if samples:
            gpu = f", {len(samples)}x {samples[0].name}"
    except Exception:  # no NVML library, no driver: a CPU machine
        pass
    return (
        f"{model}, {os.cpu_count()} cores{mem}{gpu}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
