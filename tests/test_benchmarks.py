"""The benchmark scripts run at tiny sizes and print their tables with every method and ratio (speed is not tested)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from encvit.methods import METHODS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# One thread: on a busy machine more threads than free cores make torch's OpenMP workers stall.
TINY = ["--steps", "2", "--warmup", "1", "--batch", "2", "--device", "cpu", "--threads", "1"]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(out: str) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """The Markdown table's header cells and its rows by (backbone, method)."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], cells[1:]
    assert all(len(row) == len(header) for row in rows), out
    return header, {(row[0], row[1]): row for row in rows}


def test_bench_methods_prints_every_method_with_ratios_to_full():
    out = run("bench_methods.py", "--backbones", "encvit-tiny", *TINY)
    assert "command: python benchmarks/bench_methods.py --backbones encvit-tiny" in out
    assert "batch 2 (CPU)" in out
    header, rows = table_rows(out)
    for column in ("step (ms)", "step/full", "peak RSS", "peak/full", "RSS increment", "incr/full", "AdamW state",
                   "state/full", "adapter file", "adapter/full", "plain infer (ms)", "unmerged (ms)", "merged (ms)",
                   "unmerged/plain", "merged/plain"):
        assert column in header, column
    assert set(rows) == {("encvit-tiny", m) for m in METHODS}
    full = dict(zip(header, rows["encvit-tiny", "full"]))
    assert full["step/full"] == full["peak/full"] == full["state/full"] == full["adapter/full"] == "1.00x"
    for method in ("melo", "proposed"):
        row = dict(zip(header, rows["encvit-tiny", method]))
        assert all(row[c].endswith("x") for c in ("step/full", "peak/full", "unmerged/plain", "merged/plain"))
        assert float(row["adapter/full"].rstrip("x")) < 0.1  # LoRA adapters are a small part of the model
    assert "proposed merged inference" in out and "Merge check" in out


def test_bench_methods_measures_a_timm_vit():
    """The measurement itself on a timm ViT (in process: a subprocess per method would cost seconds each)."""
    spec = importlib.util.spec_from_file_location("bench_methods", BENCHMARKS / "bench_methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = bench.measure("vit_tiny_patch16_224", "proposed", batch=1, steps=1, warmup=0)
    finally:
        torch.set_num_threads(threads)
    assert result["trainable"] == 186_442  # LoRA 36,864 + head 1,930 + patch embedding 147,648
    assert result["optimizer_bytes"] == 2 * 4 * result["trainable"]  # fp32 exp_avg and exp_avg_sq
    assert set(result["infer_s"]) == {"plain", "unmerged", "merged"}
    assert result["merge_error"] < 1e-4 and result["adapter_bytes"] > 4 * result["trainable"]


def test_bench_train_prints_plain_and_encrypted_side_by_side():
    out = run("bench_train.py", "--backbones", "encvit-tiny", "vit_tiny_patch16_224", *TINY, "--steps", "1",
              "--warmup", "0")  # later flags win: one step per setting
    assert "command: python benchmarks/bench_train.py" in out
    header, rows = table_rows(out)
    for column in ("plain (img/s)", "encrypted (img/s)", "plain step (ms)", "encrypted step (ms)", "encrypted/plain",
                   "encrypt alone (ms)", "encrypt/plain step"):
        assert column in header, column
    assert set(rows) == {(b, m) for b in ("encvit-tiny", "vit_tiny_patch16_224") for m in METHODS}
    for row in rows.values():
        cells = dict(zip(header, row))
        assert float(cells["plain (img/s)"]) > 0 and cells["encrypted/plain"].endswith("x")
