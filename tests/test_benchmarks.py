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


# ---- encvit.timing: the interleaved-repetition helpers every benchmark uses -----------------------------


def test_interleave_rotates_the_order_and_drops_warmup_rounds():
    from encvit.timing import interleave

    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = interleave(candidates, repeats=3, warmup=1)
    assert calls == list("abc" "bca" "cab" "abc")  # one warm-up round, then three timed ones, rotated
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(seconds >= 0 for values in samples.values() for seconds in values)


def test_interleave_on_the_cpu_clock_does_not_count_waiting():
    import time

    from encvit.timing import CLOCKS, interleave

    sleeps = {"sleep": lambda: time.sleep(0.05)}
    assert min(interleave(sleeps, repeats=2, warmup=0)["sleep"]) >= 0.05
    assert max(interleave(sleeps, repeats=2, warmup=0, clock=CLOCKS["cpu"])["sleep"]) < 0.04


def test_compare_summarises_samples_and_ratios_per_round():
    import json

    import numpy as np
    import pytest

    from encvit.timing import compare, ratios, spread_cell, summarize

    samples = {"full": [10.0, 20.0, 12.0, 11.0], "lora": [7.0, 16.0, 9.0, 8.0]}
    result = json.loads(json.dumps(compare(samples, baseline="full")))  # survives JSON as it is
    assert result["ratio_samples"]["lora"] == [0.7, 0.8, 0.75, 8 / 11]
    assert result["ratios"]["full"] == summarize([1.0] * 4).to_dict()
    lora = result["ratios"]["lora"]
    assert lora["median"] == pytest.approx(np.median([0.7, 0.8, 0.75, 8 / 11]))
    assert (lora["min"], lora["max"], lora["n"]) == (0.7, 0.8, 4)
    assert lora["q1"] <= lora["median"] <= lora["q3"]
    # the ratio of medians (12/9.5 ~ 0.79) is not the median of per-round ratios: load hits rounds, not names
    assert result["summary"]["full"]["median"] == 11.5 and result["summary"]["lora"]["median"] == 8.5
    assert spread_cell(lora, "x") == "0.74x (0.70–0.80)"
    assert spread_cell(result["summary"]["full"], " ms", digits=0, factor=1e3) == "11,500 ms (10,000–20,000)"
    assert spread_cell(summarize([3.0]), "x") == "3.00x"
    with pytest.raises(ValueError, match="same round"):
        ratios({"full": [1.0, 2.0], "lora": [1.0]}, "full")
    with pytest.raises(KeyError, match="baseline"):
        ratios(samples, "melo")
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def test_report_json_and_two_runs_compared(tmp_path, capsys):
    import json

    from encvit.timing import Report, compare, main, markdown_table

    runs = []
    for i, lora in enumerate(([7.0, 8.0, 9.0], [8.5, 9.5, 10.0])):
        report = Report("benchmarks/bench_x.py", ["--repeats", "3"], settings={"repeats": 3})
        assert report.header().startswith("command: python benchmarks/bench_x.py --repeats 3\nmachine: ")
        assert " cores, load average " in report.header()
        report.results.append({"backbone": "b", "step": compare({"full": [10.0] * 3, "lora": lora}, "full")})
        assert report.finish(tmp_path / f"run{i}.json").startswith("load average at the end: ")
        runs.append(tmp_path / f"run{i}.json")
    saved = json.loads(runs[0].read_text())
    assert saved["machine_start"]["cores"] >= 1 and saved["machine_end"]["load_avg"]
    assert saved["results"][0]["step"]["samples"]["lora"] == [7.0, 8.0, 9.0]

    assert main([str(runs[0]), str(runs[0])]) == 0  # a run always overlaps itself
    assert main([str(runs[0]), str(runs[1])]) == 0  # 0.70-0.90 and 0.85-1.00 overlap
    out = capsys.readouterr().out
    assert "results[0].step.ratios.lora" in out and "2 of 2 overlap" in out
    saved["results"][0]["step"]["ratios"]["lora"].update(min=2.0, median=2.5, max=3.0)
    (tmp_path / "apart.json").write_text(json.dumps(saved))
    assert main([str(runs[1]), str(tmp_path / "apart.json")]) == 1
    assert "| NO |" in capsys.readouterr().out
    assert markdown_table(["a", "b"], [["x", 1]]) == "| a | b |\n|---|---:|\n| x | 1 |"
