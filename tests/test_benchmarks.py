"""The benchmark scripts run at tiny sizes; their reports carry medians with spread and ratios that agree with
the raw per-round times (speed itself is not tested)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from encvit.models.methods import METHODS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# One thread: on a busy machine more threads than free cores make torch's OpenMP workers stall.
TINY = ["--repeats", "2", "--warmup", "1", "--batch", "2", "--device", "cpu", "--threads", "1"]


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def load_benchmark(name: str):
    """A benchmark script imported as a module (to call its measuring functions in process)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tables(out: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table printed: (header cells, rows of cells)."""
    found, block = [], []
    for line in out.splitlines() + [""]:
        if line.startswith("|---"):
            continue
        if line.startswith("| "):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            header, rows = block[0], block[1:]
            assert all(len(row) == len(header) for row in rows), out
            found.append((header, rows))
            block = []
    return found


def assert_consistent(result: dict, repeats: int) -> None:
    """A compare() result: summaries are the raw samples' medians and spreads, ratios are per round."""
    samples, base = result["samples"], result["samples"][result["baseline"]]
    for name, values in samples.items():
        assert len(values) == repeats
        summary = result["summary"][name]
        assert summary["median"] == pytest.approx(np.median(values))
        assert (summary["min"], summary["max"], summary["n"]) == (min(values), max(values), repeats)
        per_round = [a / b for a, b in zip(values, base, strict=False)]
        assert result["ratio_samples"][name] == pytest.approx(per_round)
        ratio = result["ratios"][name]
        assert ratio["median"] == pytest.approx(np.median(per_round))
        assert ratio["min"] <= ratio["q1"] <= ratio["median"] <= ratio["q3"] <= ratio["max"]


def test_bench_methods_reports_medians_with_spread_and_per_round_ratios(tmp_path):
    from encvit.common.timing import spread_cell

    report = tmp_path / "methods.json"
    out = run(
        "bench_methods.py",
        "--backbones",
        "encvit-tiny",
        "--methods",
        "full",
        "proposed",
        "--memory-repeats",
        "2",
        "--json",
        str(report),
        *TINY,
    )
    assert "command: python benchmarks/bench_methods.py --backbones encvit-tiny" in out
    assert "batch 2 (CPU)" in out and " cores, load average " in out and "load average at the end" in out
    (train_header, train_rows), (infer_header, infer_rows) = tables(out)
    for column in (
        "step (ms)",
        "step/full",
        "peak RSS (MiB)",
        "peak/full",
        "RSS increment (MiB)",
        "incr/full",
        "AdamW state",
        "state/full",
        "adapter file",
        "adapter/full",
    ):
        assert column in train_header, column
    assert [row[:2] for row in train_rows] == [["encvit-tiny", "full"], ["encvit-tiny", "proposed"]]
    assert [row[1] for row in infer_rows] == ["plain", "proposed unmerged", "proposed merged"]

    saved = json.loads(report.read_text())
    assert saved["settings"]["repeats"] == 2 and saved["machine_start"]["cores"] >= 1
    (result,) = saved["results"]
    for key, repeats in (("step", 2), ("infer", 2), ("peak", 2), ("increment", 2)):
        assert_consistent(result[key], repeats)
    proposed = dict(zip(train_header, train_rows[1], strict=False))
    # the printed cells are the JSON's summaries: median (min–max)
    assert proposed["step/full"] == spread_cell(result["step"]["ratios"]["proposed"], "x")
    assert proposed["peak/full"] == spread_cell(result["peak"]["ratios"]["proposed"], "x")
    assert proposed["step (ms)"] == spread_cell(result["step"]["summary"]["proposed"], digits=0, factor=1e3)
    assert float(proposed["adapter/full"].rstrip("x")) < 0.1  # LoRA adapters are a small part of the model
    merged = dict(zip(infer_header, infer_rows[2], strict=False))
    assert merged["/plain"] == spread_cell(result["infer"]["ratios"]["proposed merged"], "x", digits=3)
    assert result["merge_error"]["proposed"] < 1e-4
    assert "proposed step time" in out and "on the median" in out and "Merge check" in out


def test_bench_methods_measures_a_timm_vit():
    """The measurements themselves on a timm ViT (in process: a subprocess per method costs seconds each)."""
    bench = load_benchmark("bench_methods")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        memory = bench.measure_memory("vit_tiny_patch16_224", "proposed", batch=1)
        speed = bench.measure_speed(
            "vit_tiny_patch16_224",
            ["full", "melo", "proposed"],
            batch=1,
            repeats=1,
            warmup=0,
            clock="cpu",
            references=True,
        )
    finally:
        torch.set_num_threads(threads)
    assert memory["trainable"] == 186_442  # LoRA 36,864 + head 1,930 + patch embedding 147,648
    assert memory["optimizer_bytes"] == 2 * 4 * memory["trainable"]  # fp32 exp_avg and exp_avg_sq
    assert memory["peak_bytes"] >= memory["base_bytes"] > 0 and memory["adapter_bytes"] > 4 * memory["trainable"]
    assert list(speed["step"]["samples"]) == [
        "full",
        "melo",
        "proposed",
        "floor",
        "proposed, summed weight",
        "forward only",
    ]
    assert "| vit_tiny_patch16_224 | floor |" in bench.references_table([speed])
    assert list(speed["infer"]["samples"]) == [
        "plain",
        "melo unmerged",
        "melo merged",
        "proposed unmerged",
        "proposed merged",
    ]
    assert speed["step"]["ratios"]["full"]["median"] == 1.0
    assert max(speed["merge_error"].values()) < 1e-4


def test_bench_train_reports_plain_and_encrypted_per_round(tmp_path):
    from encvit.common.timing import spread_cell

    report = tmp_path / "train.json"
    out = run(
        "bench_train.py",
        "--backbones",
        "encvit-tiny",
        "vit_tiny_patch16_224",
        *TINY,
        "--repeats",
        "3",
        "--warmup",
        "0",
        "--json",
        str(report),
    )  # later flags win
    assert "command: python benchmarks/bench_train.py" in out and " cores, load average " in out
    ((header, rows),) = tables(out)
    for column in (
        "plain (img/s)",
        "encrypted (img/s)",
        "plain step (ms)",
        "encrypted step (ms)",
        "encrypted/plain",
        "encrypt alone (ms)",
        "encrypt/plain step",
    ):
        assert column in header, column
    assert {(row[0], row[1]) for row in rows} == {
        (b, m) for b in ("encvit-tiny", "vit_tiny_patch16_224") for m in METHODS
    }
    saved = json.loads(report.read_text())["results"]
    for row, result in zip(rows, saved, strict=False):
        assert_consistent(result["times"], 3)
        cells = dict(zip(header, row, strict=False))
        assert cells["encrypted/plain"] == spread_cell(result["times"]["ratios"]["encrypted"], "x", digits=3)
        assert cells["encrypt/plain step"] == spread_cell(result["times"]["ratios"]["encrypt alone"], "%", factor=100)
        assert cells["goal <= 3%"] in ("met", "NOT met")


def test_bench_cipher_reports_copy_encrypt_and_loop_per_round(tmp_path):
    from encvit.common.timing import spread_cell

    report = tmp_path / "cipher.json"
    out = run(
        "bench_cipher.py",
        "--batch",
        "4",
        "--size",
        "32",
        "--repeats",
        "3",
        "--loop-images",
        "2",
        "--threads",
        "1",
        "--clock",
        "cpu",
        "--json",
        str(report),
    )
    ((header, rows),) = tables(out)
    assert header == ["dtype", "copy (ms)", "encrypt (ms)", "per-block loop (ms)", "encrypt/copy", "loop/encrypt"]
    saved = json.loads(report.read_text())["results"]
    assert [row[0] for row in rows] == [r["dtype"] for r in saved] == ["uint8", "float32"]
    for row, result in zip(rows, saved, strict=False):
        samples = result["samples"]
        for name, values in samples.items():
            assert result["summary"][name]["median"] == pytest.approx(np.median(values)) and len(values) == 3
        for name, (top, base) in {"encrypt/copy": ("encrypt", "copy"), "loop/encrypt": ("loop", "encrypt")}.items():
            per_round = [a / b for a, b in zip(samples[top], samples[base], strict=False)]
            assert result["ratio_samples"][name] == pytest.approx(per_round)
            assert result["ratios"][name]["median"] == pytest.approx(np.median(per_round))
        assert row[4] == spread_cell(result["ratios"]["encrypt/copy"], "x")
        assert row[5] == spread_cell(result["ratios"]["loop/encrypt"], "x", digits=0)


def test_bench_fhe_reports_encrypted_and_numpy_iterations_per_round(tmp_path):
    from encvit.common.timing import spread_cell

    report = tmp_path / "fhe.json"
    out = run(
        "bench_fhe.py",
        "--dim",
        "8",
        "--batch-size",
        "32",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--clock",
        "cpu",
        "--json",
        str(report),
    )
    assert "command: python benchmarks/bench_fhe.py --dim 8" in out and " cores, load average " in out
    (header, rows), _shares = tables(out)
    (result,) = json.loads(report.read_text())["results"]
    assert_consistent(result["comparison"], 2)
    assert result["comparison"]["baseline"] == "numpy"
    cells = dict(zip(header, rows[0], strict=False))
    assert cells["features"] == "8"
    assert cells["s / iteration"] == spread_cell(result["comparison"]["summary"]["encrypted"], " s")
    assert cells["encrypted / numpy"] == spread_cell(result["comparison"]["ratios"]["encrypted"], "x", digits=0)
    assert len(result["refresh_seconds"]) == len(result["step_seconds"]) == 2
    assert "goal at 8 features" in out and "load average at the end" in out


def test_bench_fhe_memory_runs_both_sizes_alternating_and_reports_their_ratio(tmp_path):
    report = tmp_path / "memory.json"
    out = run("bench_fhe_memory.py", "--dim", "8", "--samples", "20", "--repeats", "1", "--json", str(report))
    results = json.loads(report.read_text())["results"]
    small, large, ratio = results
    assert (small["samples"], large["samples"]) == (20, 40) and len(small["runs"]) == len(large["runs"]) == 1
    peaks = [r["runs"][0]["peak_rss_mb"] for r in (small, large)]
    assert min(peaks) > 100 and ratio["ratio_2n_over_n"]["median"] == pytest.approx(peaks[1] / peaks[0])
    assert large["runs"][0]["iterations"] >= small["runs"][0]["iterations"]  # twice the samples: as many batches
    assert "peak RSS at 40 / 20 samples" in out and "load average" in out and " cores, load average " in out


def test_bench_app_reports_a_class_with_the_machine_beside_each_figure(tmp_path):
    from encvit.common.timing import spread_cell, summarize

    report = tmp_path / "app.json"
    out = run("bench_app.py", "--visitors", "1", "--rounds", "2", "--floor", "--settle", "0", "--json", str(report))
    assert "command: python benchmarks/bench_app.py --visitors 1 --rounds 2 --floor --settle 0" in out
    assert " cores, load average " in out
    ((header, rows),) = tables(out)
    (row,) = json.loads(report.read_text())["results"]
    cells = dict(zip(header, rows[0], strict=True))
    assert row["answered"] == row["uploads"] == 2 and row["lost"] == [] and cells["uploads answered"] == "2 of 2"
    (visit,) = row["visits"]
    results = [step["seconds"] for step in visit["rounds"]]
    assert [step["outcome"] for step in visit["rounds"]] == ["answered", "answered"] and min(results) > 0
    assert cells["page open"] == spread_cell(summarize([visit["open_seconds"]]), " s", digits=1)
    assert cells["Enter to result"] == spread_cell(summarize(results), " s", digits=1)  # median (min–max)
    assert row["result"]["max"] == max(results)
    assert 100 < row["peak_rss_mb"] and cells["server peak RSS (MiB)"] == f"{row['peak_rss_mb']:,.0f}"
    assert 0 < row["server_cpu_s"] < row["machine_cpu_s"] and row["first_visit_s"] > 0
    floor = row["floor"]  # the same class on a bare page with the same widgets and cards
    assert floor["lost"] == [] and floor["result"]["max"] > 0 and floor["result"]["n"] == 2
    assert cells["floor: page open"] == spread_cell(floor["open"], " s", digits=1)
    assert cells["floor: Enter to result"] == spread_cell(floor["result"], " s", digits=1)
    assert cells["load average before → after"] == f"{row['load_before']:.2f} → {row['load_after']:.2f}"
    assert "every upload answered: met" in out and "load average at the end" in out
    spent = row["cpu_by_kind"]
    assert spent["chromium renderer"] > 0 and spent["server (streamlit)"] > 0, spent
    assert sum(spent.values()) <= row["machine_cpu_s"] + 2  # a part of the machine's time (reads 0.5 s apart)
    assert f"- 1 visitors: {next(iter(spent))} {next(iter(spent.values())):.1f}" in out


def test_benchmarks_refuse_bad_repeats():
    scripts = ("bench_methods.py", "bench_train.py", "bench_cipher.py", "bench_fhe.py", "bench_attack.py")
    # In parallel: each spends its seconds importing torch before argparse refuses.
    running = {
        script: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / script), "--repeats", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in scripts
    }
    for script, process in running.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2 and "--repeats must be at least 1" in stderr, script


# ---- encvit.common.timing: the interleaved-repetition helpers every benchmark uses -----------------------------


def test_interleave_rotates_the_order_and_drops_warmup_rounds():
    from encvit.common.timing import interleave

    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = interleave(candidates, repeats=3, warmup=1)
    assert calls == list("abcbcacababc")  # one warm-up round, then three timed ones, rotated
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(seconds >= 0 for values in samples.values() for seconds in values)


def test_interleave_on_the_cpu_clock_does_not_count_waiting():
    import time

    from encvit.common.timing import CLOCKS, interleave

    sleeps = {"sleep": lambda: time.sleep(0.05)}
    assert min(interleave(sleeps, repeats=2, warmup=0)["sleep"]) >= 0.05
    assert max(interleave(sleeps, repeats=2, warmup=0, clock=CLOCKS["cpu"])["sleep"]) < 0.04


def test_compare_summarises_samples_and_ratios_per_round():
    import json

    import numpy as np
    import pytest

    from encvit.common.timing import compare, ratios, spread_cell, summarize

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

    from encvit.common.timing import Report, compare, main, markdown_table

    runs = []
    for i, lora in enumerate(([7.0, 8.0, 9.0], [8.5, 9.5, 10.0])):
        report = Report("benchmarks/bench_x.py", ["--repeats", "3"], settings={"repeats": 3})
        assert report.header().startswith("command: python benchmarks/bench_x.py --repeats 3\nmachine: ")
        assert " cores, load average " in report.header()
        report.results.append({"backbone": "b", "step": compare({"full": [10.0] * 3, "lora": lora}, "full")})
        assert report.finish(tmp_path / f"run{i}.json").startswith("load average at the end: ")
        runs.append(tmp_path / f"run{i}.json")
    saved = json.loads(runs[0].read_text())
    assert saved["machine_start"]["cores"] >= 1 and saved["machine_end"]["load_avg"] and saved["elapsed_s"] >= 0
    assert saved["results"][0]["step"]["samples"]["lora"] == [7.0, 8.0, 9.0]

    assert main([str(runs[0]), str(runs[0])]) == 0  # a run always overlaps itself
    assert main([str(runs[0]), str(runs[1])]) == 0  # 0.70-0.90 and 0.85-1.00 overlap
    out = capsys.readouterr().out
    assert "results[b].step.ratios.lora" in out and "2 of 2 overlap" in out
    saved["results"][0]["step"]["ratios"]["lora"].update(min=2.0, median=2.5, max=3.0)
    (tmp_path / "apart.json").write_text(json.dumps(saved))
    assert main([str(runs[1]), str(tmp_path / "apart.json")]) == 1
    assert "| NO |" in capsys.readouterr().out
    assert markdown_table(["a", "b"], [["x", 1]]) == "| a | b |\n|---|---:|\n| x | 1 |"


# ---- where a LoRA step's time goes: the qkv layer never forms the summed weight -------------------------


def test_lora_training_forms_no_qkv_weight_gradient_and_matches_the_summed_weight():
    """The qkv forward adds the low-rank path to the frozen product: same outputs and gradients as multiplying
    by the summed weight, without the full (3*dim x dim) weight gradient that only A and B would use."""
    from torch.nn import functional as F

    from encvit.models.backbones import create_backbone
    from encvit.models.lora import qkv_layers
    from encvit.models.methods import prepare

    torch.manual_seed(0)
    model = prepare(create_backbone("vit_tiny_patch16_224", pretrained=False), "proposed", 10)
    for qkv in qkv_layers(model):  # non-zero B, so that the update is visible
        torch.nn.init.normal_(qkv.parametrizations.weight[0].lora_B_q, std=0.02)
        torch.nn.init.normal_(qkv.parametrizations.weight[0].lora_B_v, std=0.02)
    summed_weight_built = []
    for qkv in qkv_layers(model):
        qkv.parametrizations.weight[0].register_forward_hook(lambda *_: summed_weight_built.append(1))
    x = torch.randn(2, 3, 224, 224)
    model(x).square().sum().backward()
    assert not summed_weight_built  # a training step never materialises W + BA
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == {name for name, p in model.named_parameters() if p.requires_grad}
    below_blocks = {name for name in trained if not name.startswith(("blocks.", "head."))}
    assert below_blocks == {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert all("lora_" in name for name in trained if name.startswith("blocks."))

    low_rank = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    tokens = torch.randn(2, 197, 192)
    qkv = qkv_layers(model)[0]
    assert torch.allclose(qkv(tokens), F.linear(tokens, qkv.weight, qkv.bias), atol=1e-5)
    for layer in qkv_layers(model):  # the summed-weight forward, as a reference
        type(layer).forward = lambda self, t: F.linear(t, self.weight, self.bias)
    model(x).square().sum().backward()
    assert summed_weight_built
    for name, grad in low_rank.items():
        reference = dict(model.named_parameters())[name].grad
        assert torch.allclose(grad, reference, rtol=1e-3, atol=1e-4 * reference.abs().max().item()), name


def test_bench_attack_reports_each_attack_per_round_with_what_it_recovered(tmp_path):
    report = tmp_path / "attack.json"
    out = run(
        "bench_attack.py",
        "--images",
        "12",
        "--photo",
        "coffee",
        "--photo-block",
        "4",
        "--crop",
        "64",
        "--repeats",
        "2",
        "--json",
        str(report),
    )
    assert "| ciphertext-only, M = 4 |" in out and "| known-plaintext, M = 16 |" in out
    data = json.loads(report.read_text())
    result = data["results"][0]
    assert set(result["samples"]) == {
        "encrypt (baseline)",
        "ciphertext-only, M = 4",
        "ciphertext-only, M = 16",
        "known-plaintext, M = 16",
        "chosen-plaintext, M = 16",
    }
    assert all(len(v) == 2 for v in result["samples"].values())
    for name, ratios in result["ratios"].items():  # per-round ratios to the baseline, from the raw times
        expected = np.median(np.divide(result["samples"][name], result["samples"]["encrypt (baseline)"]))
        assert ratios["median"] == pytest.approx(expected, rel=1e-6)
    assert [s["positions_exact"] for s in result["quality"]["known-plaintext, M = 16"]] == [1.0, 1.0]
    assert data["settings"]["photo_block"] == 4


def test_the_shaped_link_carries_bytes_unchanged_at_its_bandwidth_and_round_trip():
    import socket
    import socketserver
    import threading
    import time

    shaped_link = load_benchmark("shaped_link")

    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            while data := self.request.recv(65536):
                self.request.sendall(data)

    payload = np.random.default_rng(0).bytes(1_000_000)
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as echo:
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        try:
            with shaped_link.ShapedLink("127.0.0.1", echo.server_address[1], mbit=40, rtt_ms=100) as link:
                port = int(link.url.rsplit(":", 1)[1])
                start = time.monotonic()
                with socket.create_connection(("127.0.0.1", port)) as conn:
                    conn.sendall(payload)
                    received = b""
                    while len(received) < len(payload):
                        received += conn.recv(65536)
                seconds = time.monotonic() - start
        finally:
            echo.shutdown()
    assert received == payload
    # 1 MB at 40 Mbit/s is 0.2 s each way (pipelined), plus a round trip of 0.1 s at least
    assert 0.3 <= seconds < 10, seconds


def test_the_service_benchmark_projects_links_from_bytes_and_round_trips_and_weighs_zstd():
    bench = load_benchmark("bench_fhe_service")
    loopback = {
        "seconds_per_iteration": 2.0,
        "mb_up_per_iteration": 10.0,
        "mb_down_per_iteration": 5.0,
        "requests_per_iteration": 3.0,
    }
    assert bench.projected(loopback, 100, 20) == pytest.approx(2.0 + 15 * 8 / 100 + 3 * 0.020)
    assert bench.projected(loopback, 10, 20) > bench.projected(loopback, 100, 20) > bench.projected(loopback, 1000, 1)
    for direction, z in bench.zstd_figures(8, classes=3).items():
        assert 0 < z["zstd_mb"] < z["raw_mb"] and z["ratio"] == pytest.approx(z["zstd_mb"] / z["raw_mb"]), direction
        saved = (z["raw_mb"] - z["zstd_mb"]) * 8
        assert z["break_even_mbit"] == pytest.approx(saved / (z["compress_seconds"] + z["decompress_seconds"]))


def test_cpu_by_kind_counts_a_process_that_starts_inside_the_block_under_its_kind():
    cpu_by_kind = load_benchmark("cpu_by_kind")
    assert cpu_by_kind.kind_of("/usr/lib/chromium/chromium --type=renderer --lang=en") == "chromium renderer"
    assert cpu_by_kind.kind_of("/usr/lib/chromium/chromium --headless --no-sandbox") == "chromium browser"
    assert cpu_by_kind.kind_of("python -m streamlit run app/Home.py") == "server (streamlit)"
    burn = "import time\nend = time.process_time() + 0.8\nwhile time.process_time() < end: pass"
    with cpu_by_kind.CpuByKind(interval=0.1) as spent:
        subprocess.run([sys.executable, "-c", burn, "streamlit"], check=True)  # named a server by its command line
    # the child's 0.8 s of work and start-up, less what it spent after the last reading (at most 0.1 s)
    assert 0.7 <= spent.seconds["server (streamlit)"] < 3, spent.seconds


def test_bench_running_widget_reports_each_pages_share_of_a_core_with_the_machine(tmp_path):
    from encvit.common.timing import spread_cell

    report = tmp_path / "widget.json"
    out = run("bench_running_widget.py", "--repeats", "1", "--seconds", "2", "--json", str(report))
    assert "command: python benchmarks/bench_running_widget.py --repeats 1 --seconds 2" in out
    assert " cores, load average " in out and "load average at the end" in out
    ((header, rows),) = tables(out)
    (result,) = json.loads(report.read_text())["results"]
    assert [row[0] for row in rows] == ["widget shown", "widget hidden"]
    for name, share, ratio in rows:
        (measured,) = result["shares"][name]
        assert 0 <= measured < 2 and share == spread_cell(result["summaries"][name], "%", digits=1, factor=100)
        assert ratio == spread_cell(result["ratios"][name], "x")
    assert rows[0][2] == "1.00x"  # the baseline against itself


def test_bench_cards_reports_each_pages_open_beside_the_floor(tmp_path):
    from encvit.common.timing import spread_cell

    report = tmp_path / "cards.json"
    out = run("bench_cards.py", "--visitors", "1", "--repeats", "1", "--pause", "0", "--json", str(report))
    assert "command: python benchmarks/bench_cards.py --visitors 1 --repeats 1 --pause 0" in out
    assert " cores, load average " in out and "load average at the end" in out
    ((header, rows),) = tables(out)
    (result,) = json.loads(report.read_text())["results"]
    assert header[0] == "page (1 visitors at once)"
    assert [row[0] for row in rows] == [
        "floor: three small tables",
        "cards as Streamlit elements",
        "cards as HTML (the app)",
    ]
    for name, opened, ratio in rows:
        (seconds,) = result["opens"][name]  # one visitor, one round
        assert 0 < seconds < 120 and opened == spread_cell(result["summaries"][name], " s", digits=1)
        assert ratio == spread_cell(result["ratios"][name], "x")
    assert rows[1][2] == "1.00x"  # the baseline against itself


def test_the_browser_benchmarks_refuse_bad_values_before_any_work(tmp_path):
    bad = {
        "bench_app.py --settle": ["bench_app.py", "--settle", "-1"],
        "bench_app.py --app": ["bench_app.py", "--app", str(tmp_path / "no-such-page.py")],
        "bench_app.py --visitors": ["bench_app.py", "--visitors", "0"],
        "bench_running_widget.py --repeats": ["bench_running_widget.py", "--repeats", "0"],
        "bench_running_widget.py --seconds": ["bench_running_widget.py", "--seconds", "0"],
        "bench_cards.py --visitors": ["bench_cards.py", "--visitors", "0"],
        "bench_cards.py --timeout": ["bench_cards.py", "--timeout", "0"],
        "bench_cards.py --pause": ["bench_cards.py", "--pause", "-1"],
    }
    running = {  # in parallel: each spends its seconds importing torch before argparse refuses
        name: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / script), *args, "--json", str(tmp_path / f"{i}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (name, (script, *args)) in enumerate(bad.items())
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        flag = name.split()[1]
        assert process.returncode == 2 and flag in err and "Traceback" not in err, (name, err[-500:])
        assert "command:" not in out, name  # refused before the report starts
    assert not list(tmp_path.glob("*.json"))
