"""The encrypted head as a service: a whole `encvit fhe-train` through `encvit fhe-serve` against the same run in
process, a shaped link, the server's memory with two jobs, and whether SEAL's zstd compression pays.

    python benchmarks/bench_fhe_service.py [--dim 768] [--samples 4096] [--epochs 2] [--repeats 2] [--warmup 0]
                                           [--link 100:20] [--json PATH]

1. Loopback. Random features (`--dim` wide, 10 classes, `--samples` training samples, 500 validation and test),
   every feature kept (`--components all`), batch 1024. Each round runs the command in process and through a
   server on 127.0.0.1 (its own process), in alternating order; a run's seconds per iteration are its training
   seconds (steps, refreshes, validation) over its iterations. The report gives the median (min-max) of each, their
   per-round ratio, MB each way and HTTP requests per iteration, and the upload of the training set.
2. A real link. One more remote run through a proxy that shapes 127.0.0.1 to `--link MBIT:RTT_MS` (default
   100 Mbit/s, 20 ms), and seconds per iteration at 10 Mbit/s, 100 Mbit/s and 1 Gbit/s projected from the
   loopback run's arithmetic, bytes and round trips: where the refresh costs more than the server's arithmetic.
3. Memory. Two remote jobs of two tokens at once; the server's peak resident memory (VmHWM).
4. zstd. One refresh's ciphertexts as SEAL writes them (zstd) against their uncompressed size, and the time to
   compress and decompress them: the link speed below which compression pays.

Sizes also come from the environment: ENCVIT_BENCH_DIM, ENCVIT_BENCH_SAMPLES, ENCVIT_BENCH_EPOCHS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_fhe_memory import write_features  # noqa: E402
from shaped_link import ShapedLink  # noqa: E402

from encvit.common.timing import Report, argv_of, compare, markdown_table, spread_cell, summarize  # noqa: E402

ENCVIT = [sys.executable, "-m", "encvit.cli"]
LINKS = {"10 Mbit/s, 20 ms": (10, 20), "100 Mbit/s, 20 ms": (100, 20), "1 Gbit/s, 1 ms": (1000, 1)}
TRAINING_ROUTES = ("GET weights", "PUT weights", "POST step", "GET validation-logits")
GOAL_RATIO = 1.10  # loopback: at most 10% more per iteration than in process


class Server:
    """`encvit fhe-serve` in a process of its own, on 127.0.0.1 with two tokens."""

    def __init__(self, folder: Path, threads: int):
        self.data = folder / "server"
        self.tokens = {
            name: subprocess.run(
                [*ENCVIT, "fhe-serve", "--data", str(self.data), "--new-token", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for name in ("first", "second")
        }
        self.process = subprocess.Popen(
            [*ENCVIT, "fhe-serve", "--data", str(self.data), "--port", "0", "--threads", str(threads)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.process.stdout.readline().split()
        self.url, self.port = line[-1], int(line[-1].rsplit(":", 1)[1])

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def train(features: Path, out: Path, args, url: str | None = None, token: str = "") -> subprocess.Popen:
    """One `encvit fhe-train` in its own process (remote when `url`)."""
    command = [
        *ENCVIT,
        "fhe-train",
        "--features",
        str(features),
        "--components",
        "all",
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "1024",
        "--threads",
        str(args.threads),
        "--no-progress",
        "--out",
        str(out),
    ]
    if url:
        command += ["--server", url]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ENCVIT_FHE_TOKEN": token},
    )


def figures(out: Path) -> dict:
    """A run's seconds per iteration (training seconds / iterations), its bytes and requests per iteration."""
    result = json.loads((out / "result.json").read_text())
    fhe = json.loads((out / "fhe.json").read_text())
    iterations, timings, sent = result["iterations"], fhe["timings"], fhe["bytes"]
    up, down = sent["client_to_server"], sent["server_to_client"]
    upload_kinds = ("public_keys", "features_and_labels", "validation_features", "initial_weights")
    http = result.get("server", {}).get("http", {})
    return {
        "iterations": iterations,
        "seconds_per_iteration": timings["training_seconds"] / iterations,
        "step_seconds": result["seconds_per_iteration"],
        "refresh_seconds_per_iteration": timings.get("refresh_seconds", 0.0) / iterations,
        "upload_mb": sum(up.get(k, 0) for k in upload_kinds) / 1e6,
        "upload_seconds": timings.get("client_encrypt_seconds", 0) + timings.get("server_load_seconds", 0),
        "mb_up_per_iteration": (up["total"] - sum(up.get(k, 0) for k in upload_kinds)) / 1e6 / iterations,
        "mb_down_per_iteration": down["total"] / 1e6 / iterations,
        # the training loop's round trips: refreshes (both ways), steps, validation logits
        "requests_per_iteration": sum(http.get(k, 0) for k in TRAINING_ROUTES) / iterations,
        "requests": http.get("requests", 0),
        "encrypted_test_acc": result["encrypted_test_acc"],
    }


def run_one(features: Path, out: Path, args, url: str | None = None, token: str = "") -> dict:
    process = train(features, out, args, url, token)
    _, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"fhe-train failed: {err[-2000:]}")
    return figures(out)


def projected(loopback: dict, mbit: float, rtt_ms: float) -> float:
    """Seconds per iteration on a link: the loopback run's time plus the bytes at `mbit` and a round trip each."""
    wire = (loopback["mb_up_per_iteration"] + loopback["mb_down_per_iteration"]) * 8 / mbit
    return loopback["seconds_per_iteration"] + wire + loopback["requests_per_iteration"] * rtt_ms / 1000


def zstd_figures(dim: int, classes: int = 10) -> dict:
    """One refresh's ciphertexts: SEAL's zstd size against the raw size, and compress / decompress seconds."""
    import zstandard

    from encvit.fhe import ckks
    from encvit.fhe.client import Client
    from encvit.fhe.params import PRESETS
    from encvit.fhe.transport import JobSettings

    settings = JobSettings("n16384-l5", dim, classes, 1024, 4.0, 0.9)
    client = Client(PRESETS[settings.preset], settings.layout(), threads=2)
    weights = np.random.default_rng(0).normal(size=(classes, dim))
    sent = client.encrypt_weights(weights)  # the client's answer to a refresh (seeded, both forms)
    server_side = [ckks.saved_bytes(ckks.ciphertext_from_bytes(client.context, d)) for d in sent["update"]]
    blobs = {
        "client to server (seeded)": [d for form in sent.values() for d in form],
        "server to client (full)": server_side,
    }
    out = {}
    for name, items in blobs.items():
        raw = []
        for blob in items:
            if blob[5] != 2:  # SEAL's header byte 5 is the compression mode: 2 = zstd
                raise SystemExit(f"SEAL wrote compression mode {blob[5]}, not zstd")
            raw.append(zstandard.ZstdDecompressor().decompressobj().decompress(blob[16:]))
        compressor, decompressor = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
        start = time.perf_counter()
        packed = [compressor.compress(r) for r in raw]
        compress_s = time.perf_counter() - start
        start = time.perf_counter()
        for p in packed:
            decompressor.decompress(p)
        decompress_s = time.perf_counter() - start
        sealed, plain = sum(len(b) for b in items), sum(len(r) + 16 for r in raw)
        saved_mb = (plain - sealed) / 1e6
        out[name] = {
            "ciphertexts": len(items),
            "zstd_mb": sealed / 1e6,
            "raw_mb": plain / 1e6,
            "ratio": sealed / plain,
            "compress_seconds": compress_s,
            "decompress_seconds": decompress_s,
            # compression pays on links slower than this: the bytes saved take longer than compressing them
            "break_even_mbit": saved_mb * 8 / (compress_s + decompress_s),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=int(os.environ.get("ENCVIT_BENCH_DIM", 768)))
    parser.add_argument("--samples", type=int, default=int(os.environ.get("ENCVIT_BENCH_SAMPLES", 4096)))
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("ENCVIT_BENCH_EPOCHS", 2)))
    parser.add_argument("--repeats", type=int, default=2, help="loopback rounds (each: one run of each kind)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--link", default="100:20", help="the shaped link, MBIT:RTT_MS (default 100:20)")
    parser.add_argument("--skip", default="", help="parts to leave out: link, memory, zstd (comma-separated)")
    parser.add_argument("--json", help="write the whole report here")
    args = parser.parse_args(argv_of(argv))
    skip = set(filter(None, args.skip.split(",")))
    report = Report("benchmarks/bench_fhe_service.py", argv_of(argv), vars(args))
    print(report.header())
    with tempfile.TemporaryDirectory(prefix="encvit-bench-service-") as tmp:
        folder = Path(tmp)
        features = folder / "f.npz"
        write_features(str(features), args.dim, args.samples)
        server = Server(folder, args.threads)
        try:
            runs = {"in process": [], "loopback": []}
            for round_ in range(args.repeats):
                order = ["in process", "loopback"] if round_ % 2 == 0 else ["loopback", "in process"]
                for kind in order:
                    out = folder / f"{kind.replace(' ', '-')}-{round_}"
                    url = server.url if kind == "loopback" else None
                    runs[kind].append(run_one(features, out, args, url, server.tokens["first"]))
            per_iteration = {k: [r["seconds_per_iteration"] for r in v] for k, v in runs.items()}
            loop = compare(per_iteration, baseline="in process")
            remote = runs["loopback"][-1]
            report.results.append({"name": "loopback", "comparison": loop, "runs": runs})
            ratio = loop["ratios"]["loopback"]
            print(
                f"\n1. loopback, {args.dim} features, batch 1024, {remote['iterations']} iterations a run, "
                f"{args.repeats} rounds:"
            )
            print(
                markdown_table(
                    [
                        "run",
                        "s / iteration",
                        "MB up / iteration",
                        "MB down / iteration",
                        "requests / iteration",
                        "test %",
                    ],
                    [
                        [
                            k,
                            spread_cell(loop["summary"][k], " s"),
                            f"{np.median([r['mb_up_per_iteration'] for r in v]):.1f}",
                            f"{np.median([r['mb_down_per_iteration'] for r in v]):.1f}",
                            f"{np.median([r['requests_per_iteration'] for r in v]):.1f}",
                            f"{np.median([r['encrypted_test_acc'] for r in v]):.2f}",
                        ]
                        for k, v in runs.items()
                    ],
                )
            )
            print(
                f"loopback / in process: {spread_cell(ratio, 'x')} per iteration (goal at most {GOAL_RATIO:.2f}x: "
                f"{'met' if ratio['median'] <= GOAL_RATIO else 'not met'}); upload of the training set "
                f"{remote['upload_mb']:.0f} MB in {remote['upload_seconds']:.1f} s (keys included)"
            )

            if "link" not in skip:
                mbit, rtt = (float(x) for x in args.link.split(":"))
                with ShapedLink("127.0.0.1", server.port, mbit, rtt) as link:
                    shaped = run_one(features, folder / "shaped", args, link.url, server.tokens["first"])
                arithmetic = summarize([r["step_seconds"] for r in runs["loopback"]]).median
                refresh_mb = remote["mb_up_per_iteration"] + remote["mb_down_per_iteration"]
                rows = [
                    [
                        name,
                        f"{projected(remote, m, r):.2f} s",
                        f"{refresh_mb * 8 / m + remote['requests_per_iteration'] * r / 1000:.2f} s",
                    ]
                    for name, (m, r) in LINKS.items()
                ]
                crossover = refresh_mb * 8 / arithmetic
                report.results.append(
                    {
                        "name": "link",
                        "mbit": mbit,
                        "rtt_ms": rtt,
                        "measured": shaped,
                        "projected": projected(remote, mbit, rtt),
                        "crossover_mbit": crossover,
                        "arithmetic_seconds": arithmetic,
                    }
                )
                print(
                    f"\n2. a shaped link, {mbit:g} Mbit/s and {rtt:g} ms: measured "
                    f"{shaped['seconds_per_iteration']:.2f} s per iteration, projected "
                    f"{projected(remote, mbit, rtt):.2f} s"
                )
                print(markdown_table(["link", "s / iteration (projected)", "of which the wire"], rows))
                print(
                    f"the refresh's {refresh_mb:.1f} MB cost more than the server's {arithmetic:.1f} s of "
                    f"arithmetic below {crossover:.0f} Mbit/s"
                )

            if "memory" not in skip:
                both = [
                    train(features, folder / f"job-{name}", args, server.url, server.tokens[name])
                    for name in ("first", "second")
                ]
                for process in both:
                    _, err = process.communicate()
                    if process.returncode:
                        raise SystemExit(f"fhe-train failed: {err[-2000:]}")
                peak = server.peak_rss_mb()
                report.results.append({"name": "memory", "server_peak_rss_mb": peak, "jobs": 2})
                print(f"\n3. the server's peak resident memory with two jobs at once: {peak:,.0f} MB")
        finally:
            server.stop()
    if "zstd" not in skip:
        z = zstd_figures(args.dim)
        report.results.append({"name": "zstd", **z})
        print("\n4. SEAL's zstd on one refresh's ciphertexts:")
        print(
            markdown_table(
                ["direction", "ciphertexts", "zstd MB", "raw MB", "zstd / raw", "compress + decompress", "pays below"],
                [
                    [
                        k,
                        v["ciphertexts"],
                        f"{v['zstd_mb']:.2f}",
                        f"{v['raw_mb']:.2f}",
                        f"{v['ratio']:.2f}",
                        f"{(v['compress_seconds'] + v['decompress_seconds']) * 1e3:.0f} ms",
                        f"{v['break_even_mbit']:,.0f} Mbit/s",
                    ]
                    for k, v in z.items()
                ],
            )
        )
    print(report.finish(args.json))


if __name__ == "__main__":
    main()
