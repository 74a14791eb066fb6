"""Peak memory of a whole `encvit fhe-train` against the size of the training set: flat, because the server
streams the encrypted blocks from its disk one batch at a time.

    python benchmarks/bench_fhe_memory.py [--dim 768] [--samples 4500] [--epochs 1] [--repeats 2] [--json PATH]

A features file of random features (`--dim` wide, 10 classes, 500 validation and 500 test samples) is written
for N and for 2N training samples; each run is `encvit fhe-train --features F --components all` in a process of
its own (its peak resident memory is its own), the two sizes alternating, `--repeats` times each. The report gives
the median (min-max) peak RSS and wall time per size and their ratio (2N / N): a ratio near 1 is memory bounded by
the batch. Sizes also come from the environment: ENCVIT_BENCH_SAMPLES, ENCVIT_BENCH_REPEATS.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from encvit.common.timing import Report, markdown_table, spread_cell, summarize  # noqa: E402

LIMIT_GB = 12.0  # the bound at 768 features and 4,500 training samples


def write_features(path: str, dim: int, train: int, seed: int = 0) -> None:
    """Random class-dependent features (as bench_fhe.random_features) with 500 validation and test samples."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim))
    arrays = {}
    for split, n in (("train", train), ("val", 500), ("test", 500)):
        y = np.arange(n) % 10
        arrays[f"{split}_x"] = (centres[y] + 2 * rng.normal(size=(n, dim))).astype(np.float32)
        arrays[f"{split}_y"] = y
    np.savez(path, **arrays)


def worker(args) -> dict:
    """One whole fhe-train in this process; its peak RSS from /proc (VmHWM)."""
    from encvit.fhe.config import FHEConfig
    from encvit.fhe.pipeline import fhe_train

    start = time.perf_counter()
    result = fhe_train(FHEConfig(features=args.features, components="all", epochs=args.epochs), progress=False)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    return {
        "peak_rss_mb": peak,
        "seconds": time.perf_counter() - start,
        "iterations": result["iterations"],
        "seconds_per_iteration": result["seconds_per_iteration"],
        "test_acc": result["encrypted_test_acc"],
        "megabytes_to_server": result["megabytes_to_server"],
        "server_disk_mb": result["stats"]["server_disk_bytes"] / 1e6,
    }


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=768, help="feature width (ViT-B/16 and DeiT-B: 768)")
    parser.add_argument(
        "--samples",
        type=int,
        default=int(env("ENCVIT_BENCH_SAMPLES", 4500)),
        help="training samples N; the second size is 2N",
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=int(env("ENCVIT_BENCH_REPEATS", 2)))
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.dim < 1 or args.samples < 10 or args.epochs < 1 or args.repeats < 1:
        parser.error("--dim >= 1, --samples >= 10, --epochs >= 1 and --repeats >= 1")
    report = Report("benchmarks/bench_fhe_memory.py", sys.argv[1:], settings=vars(args).copy())
    print(report.header())
    sizes = [args.samples, 2 * args.samples]
    runs = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory(prefix="encvit-bench-") as folder:
        files = {}
        for n in sizes:
            files[n] = os.path.join(folder, f"features-{n}.npz")
            write_features(files[n], args.dim, n)
        for round_ in range(args.repeats):
            for n in sizes:  # alternating, so that both sizes see the same machine
                load = os.getloadavg()[0]
                done = subprocess.run(
                    [
                        sys.executable,
                        os.path.abspath(__file__),
                        "--worker",
                        "--features",
                        files[n],
                        "--epochs",
                        str(args.epochs),
                    ],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    sys.exit(f"{n} samples failed:\n{done.stderr[-3000:]}")
                result = {
                    **json.loads(done.stdout.strip().splitlines()[-1]),
                    "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                }
                runs[n].append(result)
                print(
                    f"  round {round_ + 1}, {n:,} samples: peak {result['peak_rss_mb']:,.0f} MB, "
                    f"{result['seconds']:.0f} s ({result['iterations']} iterations at "
                    f"{result['seconds_per_iteration']:.2f} s), load average {result['load_average'][0]:.2f} "
                    f"before, {result['load_average'][1]:.2f} after",
                    flush=True,
                )
    summaries = {
        n: {
            "peak_rss_mb": summarize([r["peak_rss_mb"] for r in runs[n]]),
            "seconds": summarize([r["seconds"] for r in runs[n]]),
        }
        for n in sizes
    }
    pairs = zip(runs[sizes[0]], runs[sizes[1]], strict=False)
    ratios = summarize([b["peak_rss_mb"] / a["peak_rss_mb"] for a, b in pairs])
    report.results = [
        {"samples": n, "runs": runs[n], **{k: v.to_dict() for k, v in summaries[n].items()}} for n in sizes
    ] + [{"ratio_2n_over_n": ratios.to_dict()}]
    print()
    print(
        markdown_table(
            ["training samples", "peak RSS", "wall time", "server disk"],
            [
                [
                    f"{n:,}",
                    spread_cell(summaries[n]["peak_rss_mb"], " MB", digits=0),
                    spread_cell(summaries[n]["seconds"], " s", digits=0),
                    f"{runs[n][0]['server_disk_mb']:,.0f} MB",
                ]
                for n in sizes
            ],
        )
    )
    peak_gb = summaries[sizes[0]]["peak_rss_mb"].max / 1024
    print(
        f"\npeak RSS at {2 * args.samples:,} / {args.samples:,} samples: {spread_cell(ratios, 'x')}; "
        f"at {args.samples:,} samples and {args.dim} features the bound is {LIMIT_GB:g} GB: "
        f"{'met' if peak_gb <= LIMIT_GB else 'not met'} ({peak_gb:.1f} GB at most)"
    )
    print(report.finish(args.json))


if __name__ == "__main__":
    main()
