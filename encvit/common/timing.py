"""Timing for the benchmarks: wall clock that waits for CUDA, interleaved repetitions, medians with spread.

On a shared machine one slow minute must not land on one of the compared things only. So a benchmark runs
them interleaved (A B C, then B C A, ...) for R rounds (`interleave`), summarises each one's R samples as a
median with its spread (`summarize`), and computes every ratio per round against a baseline before
summarising it (`compare`): a ratio's spread is then the spread of R ratios, each from one round.
`Report` prints the command and the machine (cores, load) and writes everything, raw samples included, as JSON.

    samples = interleave({"full": step_full, "lora": step_lora}, repeats=5, warmup=1)
    result = compare(samples, baseline="full")      # JSON-ready: samples, summaries, ratios
    spread_cell(result["ratios"]["lora"], "x")     # '0.73x (0.70–0.76)'
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .atomic import write_text


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on `device` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds that `fn()` takes on `device`, including its queued CUDA kernels.

    `clock` is wall time by default; `time.process_time` (CPU seconds of this process, all threads) does not
    count the time other processes hold the cores, so on a loaded machine it is far steadier for a
    one-thread CPU run (with several threads it also counts OpenMP workers spinning, and it misses GPU work).
    """
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


# ---- interleaved repetitions ----------------------------------------------------------------------------


def interleave(
    candidates: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each named callable, one per round: `warmup` untimed rounds, then `repeats` timed ones.

    Every round runs every callable once; the order rotates (A B C, B C A, C A B, ...) so none always goes first.
    `clock` as in `timed` (wall time by default; `CLOCKS["cpu"]` for CPU seconds).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = timed(candidates[name], device, clock)
            if round_ >= warmup:
                samples[name].append(seconds)
    return samples


@dataclass(frozen=True)
class Summary:
    """Median of repeated samples with their spread: min-max and the interquartile range (q1-q3)."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    def overlaps(self, other: Summary) -> bool:
        """Whether the min-max ranges of two summaries overlap (e.g. two runs of one benchmark)."""
        return self.min <= other.max and other.min <= self.max

    def scaled(self, factor: float) -> Summary:
        """The same summary in other units (e.g. seconds -> milliseconds with 1e3, per-image with 1/batch)."""
        return Summary(
            self.median * factor, self.min * factor, self.max * factor, self.q1 * factor, self.q3 * factor, self.n
        )

    def to_dict(self) -> dict:
        """Plain floats for JSON."""
        return asdict(self)


def summarize(samples: Sequence[float]) -> Summary:
    """Median, min, max and quartiles of `samples` (numpy's linear-interpolation percentiles)."""
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise ValueError("cannot summarise an empty list of samples")
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return Summary(float(median), float(values.min()), float(values.max()), float(q1), float(q3), int(values.size))


def as_summary(value: Summary | Mapping) -> Summary:
    """A Summary from itself or from its `to_dict()` form (as read back from a report's JSON)."""
    return value if isinstance(value, Summary) else Summary(**value)


def ratios(samples: Mapping[str, Sequence[float]], baseline: str) -> dict[str, list[float]]:
    """Per-round ratios of every name's samples to the baseline's samples of the same round."""
    if baseline not in samples:
        raise KeyError(f"baseline {baseline!r} is not among the measured names {list(samples)}")
    base = np.asarray(samples[baseline], dtype=float)
    out = {}
    for name, values in samples.items():
        values = np.asarray(values, dtype=float)
        if values.shape != base.shape:
            raise ValueError(
                f"{name!r} has {values.size} samples, the baseline {baseline!r} {base.size}: "
                "ratios pair samples of the same round"
            )
        out[name] = (values / base).tolist()
    return out


def compare(samples: Mapping[str, Sequence[float]], baseline: str | None = None) -> dict:
    """Raw samples, their summaries and, against `baseline`, per-round ratios and their summaries (JSON-ready).

    Keys: "samples", "summary" (name -> Summary dict), and with a baseline "baseline", "ratio_samples",
    "ratios" (name -> Summary dict of that name's per-round ratios).
    """
    result = {
        "samples": {name: [float(v) for v in values] for name, values in samples.items()},
        "summary": {name: summarize(values).to_dict() for name, values in samples.items()},
    }
    if baseline is not None:
        per_round = ratios(samples, baseline)
        result.update(
            baseline=baseline,
            ratio_samples=per_round,
            ratios={name: summarize(values).to_dict() for name, values in per_round.items()},
        )
    return result


# ---- printing: one cell format, Markdown tables ---------------------------------------------------------


def spread_cell(summary: Summary | Mapping, suffix: str = "", digits: int = 2, factor: float = 1.0) -> str:
    """'median (min–max)' as a table cell, e.g. '0.73x (0.70–0.76)'; the median alone for one sample."""
    s = as_summary(summary).scaled(factor)
    median = f"{s.median:,.{digits}f}{suffix}"
    return median if s.n == 1 else f"{median} ({s.min:,.{digits}f}–{s.max:,.{digits}f})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], text_columns: int = 1) -> str:
    """A Markdown table; the first `text_columns` columns are left-aligned, the rest right-aligned.

    Written by hand: pandas' to_markdown needs the extra `tabulate` package for a dozen lines of output.
    """
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- the machine, the command and the JSON report -------------------------------------------------------


def cpu_mhz() -> float:
    """The cores' mean clock now (MHz, from /proc/cpuinfo; nan where it is not reported)."""
    try:
        with open("/proc/cpuinfo") as info:
            clocks = [float(line.split(":")[1]) for line in info if line.lower().startswith("cpu mhz")]
    except OSError:
        return float("nan")
    return round(sum(clocks) / len(clocks), 1) if clocks else float("nan")


def machine() -> dict:
    """Cores, load averages (1, 5, 15 min), clock, torch threads and versions: what a timing depends on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cores": os.cpu_count(),
        "load_avg": [round(x, 2) for x in load],
        "cpu_mhz": cpu_mhz(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def describe_machine(info: Mapping) -> str:
    """One line: '2 cores, load average 3.10 / 2.95 / 2.40 (1/5/15 min), clock 2400 MHz, torch 2.5.1 with 1 thread'."""
    load = " / ".join(f"{x:.2f}" for x in info["load_avg"])
    threads = info["torch_threads"]
    mhz = info.get("cpu_mhz", float("nan"))
    clock = f", clock {mhz:.0f} MHz" if mhz == mhz else ""  # nan != nan: not reported
    return (
        f"{info['cores']} cores, load average {load} (1/5/15 min){clock}, torch {info['torch']} with {threads} "
        f"thread{'s' if threads != 1 else ''}"
    )


def add_repeat_options(parser, repeats: int, warmup: int = 1) -> None:
    """--repeats (timed rounds), --warmup (untimed rounds first) and --json (write the report there)."""
    parser.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help=f"timed rounds, each running every compared thing once (default {repeats})",
    )
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed rounds first (default {warmup})")
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the report (settings, machine, raw samples, summaries) as JSON",
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall time (default), or cpu: this process's CPU seconds, steadier on a loaded "
        "machine with --threads 1 (CPU device only)",
    )


def check_repeat_options(args, parser) -> None:
    """A usage error (exit status 2) for --repeats below 1 or a negative --warmup."""
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    if args.clock == "cpu" and str(getattr(args, "device", "cpu")).startswith("cuda"):
        parser.error("--clock cpu counts CPU seconds only and would miss the GPU's work: use --clock wall")


@dataclass
class Report:
    """What one benchmark run prints and saves: command, settings, machine and load (start and end), results.

    `results` holds one JSON-ready dict per row (typically with a `compare(...)` inside); `finish` records the
    load at the end and writes the JSON atomically when a path is given.
    """

    script: str
    argv: list[str]
    settings: dict = field(default_factory=dict)
    machine_start: dict = field(default_factory=machine)
    machine_end: dict | None = None
    results: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    elapsed_s: float | None = None

    @property
    def command(self) -> str:
        """The command line that reproduces this run."""
        return f"python {self.script} {shlex.join(self.argv)}".rstrip()

    def header(self) -> str:
        """The lines a benchmark prints first: its command and the machine with its load."""
        return f"command: {self.command}\nmachine: {describe_machine(self.machine_start)}"

    def finish(self, json_path: str | os.PathLike | None = None) -> str:
        """Record the machine at the end; write the JSON if asked. Returns a line on the load at the end."""
        import json

        self.machine_end = machine()
        self.elapsed_s = round(time.time() - self.started, 1)
        if json_path:
            write_text(json_path, json.dumps(asdict(self), indent=1) + "\n")
        load = " / ".join(f"{x:.2f}" for x in self.machine_end["load_avg"])
        return f"load average at the end: {load} (1/5/15 min); {self.elapsed_s / 60:.1f} min in all"


def argv_of(argv: list[str] | None) -> list[str]:
    """The benchmark's arguments: `argv` when called from Python, else the command line's."""
    return list(sys.argv[1:] if argv is None else argv)


LABEL_KEYS = ("backbone", "method", "dtype", "name")  # what names a row of results, when present


def _row_label(row, index: int) -> str:
    """A row's name in a path: its backbone / method / dtype / name values, else its index."""
    if isinstance(row, Mapping):
        label = " ".join(str(row[key]) for key in LABEL_KEYS if isinstance(row.get(key), str))
        if label:
            return label
    return str(index)


def summaries_in(tree, path: str = "") -> dict[str, Summary]:
    """Every Summary dict inside a report's JSON tree, by its path (e.g. 'results[encvit-tiny].step.ratios.melo')."""
    fields = set(Summary.__dataclass_fields__)
    if isinstance(tree, Mapping):
        if set(tree) == fields:
            return {path: Summary(**tree)}
        found = {}
        for key, value in tree.items():
            found.update(summaries_in(value, f"{path}.{key}" if path else str(key)))
        return found
    if isinstance(tree, list):
        found = {}
        for i, value in enumerate(tree):
            found.update(summaries_in(value, f"{path}[{_row_label(value, i)}]"))
        return found
    return {}


def compare_runs(first: Mapping, second: Mapping, only: str = ".ratios.") -> list[tuple[str, Summary, Summary]]:
    """(path, first, second) for every summary in both reports whose path contains `only` (ratios by default)."""
    a, b = summaries_in(first), summaries_in(second)
    return [(path, a[path], b[path]) for path in a if path in b and only in f".{path}"]


def main(argv: list[str] | None = None) -> int:
    """`python -m encvit.common.timing FIRST.json SECOND.json`: do two runs' ratio spreads overlap? Exit 1 if not."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        description="Compare two JSON reports of one benchmark: for every ratio, "
        "both runs' medians with spread and whether the spreads overlap."
    )
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--all", action="store_true", help="every summary, not only the ratios")
    args = parser.parse_args(argv)
    reports = []
    for path in (args.first, args.second):
        try:
            with open(path, encoding="utf-8") as f:
                reports.append(json.load(f))
        except (OSError, ValueError) as err:
            parser.error(f"cannot read the report {path}: {err}")
    pairs = compare_runs(*reports, only="." if args.all else ".ratios.")
    if not pairs:
        parser.error("the two reports share no summaries: were they made by the same benchmark?")
    rows = [
        (path, spread_cell(a, digits=3), spread_cell(b, digits=3), "yes" if a.overlaps(b) else "NO")
        for path, a, b in pairs
    ]
    print(markdown_table(("summary", "first run", "second run", "spreads overlap"), rows, text_columns=1))
    apart = sum(not a.overlaps(b) for _, a, b in pairs)
    print(f"\n{len(pairs) - apart} of {len(pairs)} overlap")
    return 1 if apart else 0


# ---- the device options every benchmark takes -----------------------------------------------------------


def add_device_options(parser) -> None:
    """--device, --amp and --threads, as every benchmark takes them."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "bf16", "off"),
        help="autocast as encvit.training.loop.autocast_for: auto = bf16/fp16 on CUDA, none on CPU",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def device_from_options(args, parser) -> str:
    """Apply --threads and resolve --device ('auto' -> cuda if present); a missing GPU is a usage error."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch sees no CUDA device")
    return device


if __name__ == "__main__":
    raise SystemExit(main())
