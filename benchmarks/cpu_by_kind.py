"""CPU seconds of every process on the machine while a block runs, summed by what the process is: Chromium's
renderers, its browser, GPU and utility processes, the Streamlit server, the Playwright driver, the rest.

A process is read from /proc every `interval` seconds: one running when the block starts counts from then, one that
starts later counts from zero; one that ends loses what it spent after its last reading, and one that starts and
ends between two readings is missed (at 0.5 s, a fraction of a second per process, beside the tens of seconds a
class of browsers spends). (psutil's process list would do the same reads; /proc is enough here.)
"""

from __future__ import annotations

import os
import threading
from collections import Counter

_TICKS = os.sysconf("SC_CLK_TCK")


def kind_of(command: str) -> str:
    """What a process is, from its command line."""
    if "chrom" in command:
        for kind in ("renderer", "gpu-process", "utility", "zygote"):
            if f"--type={kind}" in command:
                return f"chromium {kind}"
        return "chromium browser"
    if "streamlit" in command:
        return "server (streamlit)"
    if "playwright" in command and "node" in command:
        return "playwright driver"
    if "bench_app" in command or "pytest" in command:
        return "visitors' script"
    return "other"


def process_cpu(pid: int | str) -> tuple[str, float] | None:
    """(start time, user + system CPU seconds so far) of process `pid` from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[19], (int(fields[11]) + int(fields[12])) / _TICKS


class CpuByKind:
    """`with CpuByKind() as cpu: ...`, then `cpu.seconds` maps each kind to the CPU seconds it spent in the block."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.seconds: dict[str, float] = {}
        self._first: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._kind: dict[tuple[str, str], str] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-by-kind", daemon=True)

    def _read(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            found = process_cpu(pid)
            if found is None:
                continue
            process = (pid, found[0])  # a pid with its start time: a reused pid is another process
            if process not in self._kind:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                self._kind[process] = kind_of(command)
                self._first[process] = 0.0 if self._started else found[1]
            self._last[process] = found[1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def __enter__(self) -> CpuByKind:
        self._read()
        self._started = True
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        spent: Counter = Counter()
        for process, last in self._last.items():
            spent[self._kind[process]] += last - self._first[process]
        self.seconds = dict(spent.most_common())
