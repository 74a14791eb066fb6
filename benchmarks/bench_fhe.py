"""Encrypted head training at ViT widths: seconds per iteration, traffic and peak memory of the packed trainer.

    python benchmarks/bench_fhe.py [--dim 96,384,768] [--batch-size 1024] [--classes 10] [--repeats 3]
                                   [--warmup 1] [--naive-samples 0] [--json PATH]

Random features (Gaussian, scaled as the client scales real ones, every feature kept: no projection), 10 classes,
one batch of 1024 samples uploaded once (the server streams it from its disk every iteration, as in training).
Each width runs in its own process, one width at a time (so that its peak memory is its own and
the widths do not compete for memory); inside it, every round times one encrypted iteration (the refresh round
trip the iteration needs, then the server's Nesterov step) and one iteration of the numpy twin on the same batch,
interleaved, and the report gives the median and min-max of each and of their per-round ratio. Operation counts
and seconds per kind of operation say what an iteration is made of. With --naive-samples N the naive
one-ciphertext-per-sample trainer is also timed on N samples per round and scaled to the batch.
Sizes also come from the environment: ENCVIT_BENCH_DIMS, ENCVIT_BENCH_REPEATS.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from encvit.common.timing import (
    CLOCKS,
    Report,
    add_repeat_options,
    check_repeat_options,
    compare,
    interleave,
    markdown_table,
    spread_cell,
    summarize,
)

HETAL = "HETAL: 4.29-15.72 s per iteration (A40 GPU, ring degree 2^16 with bootstrapping, 768 features)"
GOAL_SECONDS = 8.0  # the goal at 768 features on 2 idle cores: half the 16.8 s of the replicated layout


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (/proc's VmHWM: its own, not inherited through fork/exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def random_features(dim: int, samples: int, classes: int, seed: int):
    """FeatureSplits of Gaussian features whose class means differ (so training has something to learn)."""
    from encvit.fhe.head import FeatureSplits

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))

    def split(n):
        y = np.arange(n) % classes
        return (centres[y] + 2 * rng.normal(size=(n, dim))).astype(np.float32), y

    return FeatureSplits(
        split(samples), split(classes), split(classes), [str(c) for c in range(classes)], "random", "0", "random"
    )


def worker(args) -> dict:
    """One width: keys, upload, then interleaved rounds of one encrypted and one numpy iteration."""
    from encvit.fhe.config import FHEConfig
    from encvit.fhe.head import nag_step
    from encvit.fhe.naive import time_naive_step
    from encvit.fhe.train import Protocol, setup

    features = random_features(int(args.dim), args.batch_size, args.classes, args.seed)
    config = FHEConfig(batch_size=args.batch_size, epochs=1, whiten_ridge=None, components="all")
    s = setup(features, config)
    protocol = Protocol(s, config)
    start = time.perf_counter()
    protocol.exchange_keys()
    protocol.upload()
    setup_seconds = time.perf_counter() - start
    upload = protocol.wire.summary()
    server, engine = protocol.server, protocol.server.engine
    block_ids = s.schedule.batches(0)[0]
    index = s.schedule.samples(block_ids)
    lr = config.lr
    parts = {"refresh": [], "step": []}
    plain = {"u": np.zeros((s.y.shape[1], s.x.shape[1]))}
    plain["w"] = plain["u"].copy()

    def encrypted_iteration():
        start = time.perf_counter()
        if server.needs_refresh():
            protocol.exchange(None, 0, lr)
        middle = time.perf_counter()
        server.step(block_ids, lr)
        parts["refresh"].append(middle - start)
        parts["step"].append(time.perf_counter() - middle)

    def numpy_iteration():
        plain["w"], plain["u"] = nag_step(plain["u"], plain["w"], s.x[index], s.y[index], s.poly, lr, config.momentum)

    candidates = {"encrypted": encrypted_iteration, "numpy": numpy_iteration}
    naive_seconds = []
    if args.naive_samples:
        few = index[: args.naive_samples]
        zero = np.zeros_like(plain["u"])
        # Timed inside: its keys and encryption are set-up, not the step (the naive keys also raise peak memory).
        candidates["naive"] = lambda: naive_seconds.append(
            time_naive_step(s.x[few], s.y[few], zero, zero, s.poly, lr, config.momentum)["seconds_per_sample"]
            * len(index)
        )
    encrypted_iteration()  # the first iteration starts from fresh weights: no refresh, not typical
    before_counts, before_seconds = dict(engine.counts), dict(engine.seconds)
    before_bytes = protocol.wire.summary()
    rounds = args.warmup + args.repeats
    samples = interleave(candidates, args.repeats, args.warmup, clock=CLOCKS[args.clock])
    if "naive" in samples:  # the naive step, timed on a few samples and scaled to the batch
        samples["naive"] = naive_seconds[-args.repeats :]
    after_bytes = protocol.wire.summary()

    def per_iteration(after: dict, before: dict) -> dict:
        return {k: (after[k] - before.get(k, 0)) / rounds for k in after if after[k] != before.get(k, 0)}

    traffic = {
        direction: {
            kind: (size - before_bytes.get(direction, {}).get(kind, 0)) / rounds
            for kind, size in kinds.items()
            if kind != "total"
        }
        for direction, kinds in after_bytes.items()
    }
    levels = {kind: dict(sorted(counter.items())) for kind, counter in engine.by_level.items()}
    protocol.server.close()
    return {
        "dim": int(args.dim),
        "inputs": s.x.shape[1],
        "layout": s.layout.describe(),
        "blocks_per_batch": len(block_ids),
        "samples": samples,
        "refresh_seconds": parts["refresh"][-args.repeats :],
        "step_seconds": parts["step"][-args.repeats :],
        "operations_per_iteration": per_iteration(dict(engine.counts), before_counts),
        "operation_seconds_per_iteration": per_iteration(dict(engine.seconds), before_seconds),
        "operations_by_level_total": levels,
        "bytes_per_iteration": traffic,
        "upload_bytes": upload,
        "setup_seconds": setup_seconds,
        "ckks": s.params.describe(),
        "peak_rss_mb": peak_rss_mb(),
        "threads": config.threads,
    }


def available_gb() -> float:
    """Memory available to new processes (GB), from /proc/meminfo."""
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dim",
        default=env("ENCVIT_BENCH_DIMS", "96,384,768"),
        help="feature widths, comma-separated (ViT-Tiny here 96, ViT-S 384, ViT-B 768)",
    )
    parser.add_argument("--batch-size", type=int, default=1024, help="samples per iteration (HETAL: 1024)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--naive-samples",
        type=int,
        default=0,
        help="also time the naive trainer on this many samples per round (0: not at all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_repeat_options(parser, repeats=int(env("ENCVIT_BENCH_REPEATS", 3)))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_repeat_options(args, parser)
    if args.worker:
        print(json.dumps({**worker(args), "peak_rss_mb": peak_rss_mb()}))
        return
    try:
        dims = [int(d) for d in args.dim.split(",")]
    except ValueError:
        parser.error(f"--dim must be integers separated by commas, got {args.dim!r}")
    if not dims or min(dims) < 1 or args.batch_size < 1 or args.classes < 2 or args.naive_samples < 0:
        parser.error("--dim values and --batch-size must be >= 1, --classes >= 2, --naive-samples >= 0")

    report = Report("benchmarks/bench_fhe.py", sys.argv[1:], settings=vars(args).copy())
    print(report.header())
    print(
        f"random features, {args.classes} classes, batch {args.batch_size}; widths {dims}, each in its own "
        f"process, one at a time; {args.repeats} timed rounds after {args.warmup} untimed"
    )
    results = []
    for dim in dims:
        free, load_before = available_gb(), os.getloadavg()[0]
        argv = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--dim",
            str(dim),
            "--batch-size",
            str(args.batch_size),
            "--classes",
            str(args.classes),
            "--naive-samples",
            str(args.naive_samples),
            "--seed",
            str(args.seed),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--clock",
            args.clock,
        ]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"width {dim} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["available_gb_before"] = free
        result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        result["comparison"] = compare(result["samples"], baseline="numpy")
        results.append(result)
        print(
            f"  width {dim}: {spread_cell(result['comparison']['summary']['encrypted'], ' s')} per iteration, "
            f"peak {result['peak_rss_mb']:,.0f} MB ({free:.1f} GB were available), load average "
            f"{result['load_average'][0]:.2f} before, {result['load_average'][1]:.2f} after",
            flush=True,
        )
    report.results = results

    print()
    rows = []
    for r in results:
        c, lay = r["comparison"], r["layout"]
        ops = r["operations_per_iteration"]
        to_server = sum(r["bytes_per_iteration"].get("client_to_server", {}).values()) / 1e6
        to_client = sum(r["bytes_per_iteration"].get("server_to_client", {}).values()) / 1e6
        upload = r["upload_bytes"]["client_to_server"]["total"] / 1e6
        rows.append(
            [
                r["dim"],
                f"{lay['samples_per_block']} x {lay['phases']} phases, {lay['offsets']} offsets "
                f"({lay['baby_steps']} x {lay['giant_steps']}), {lay['class_pairs']} pairs",
                spread_cell(c["summary"]["encrypted"], " s"),
                spread_cell(summarize(r["refresh_seconds"]), " s"),
                spread_cell(c["summary"]["numpy"], " ms", factor=1e3),
                spread_cell(c["ratios"]["encrypted"], "x", digits=0),
                f"{ops.get('rotate', 0) + ops.get('conjugate', 0):,.0f}",
                f"{ops.get('multiply', 0):,.0f}",
                f"{ops.get('relinearize', 0):,.0f}",
                f"{to_server:,.0f} / {to_client:,.0f}",
                f"{upload:,.0f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{r['load_average'][0]:.2f} / {r['load_average'][1]:.2f}",
            ]
        )
    print(
        markdown_table(
            [
                "features",
                "layout (samples per block, phases, offsets, class pairs)",
                "s / iteration",
                "of which refresh",
                "numpy twin",
                "encrypted / numpy",
                "rotations",
                "ct x ct products",
                "relinearisations",
                "MB / iteration to server / back",
                "upload MB per batch",
                "peak RSS MB",
                "load average before / after",
            ],
            rows,
            text_columns=2,
        )
    )
    if any("naive" in r["samples"] for r in results):
        print()
        print(
            markdown_table(
                ["features", "naive s / iteration (scaled)", "naive / encrypted"],
                [
                    [
                        r["dim"],
                        spread_cell(r["comparison"]["summary"]["naive"], " s", digits=0),
                        spread_cell(compare(r["samples"], "encrypted")["ratios"]["naive"], "x", digits=0),
                    ]
                    for r in results
                    if "naive" in r["samples"]
                ],
            )
        )
    print()
    kinds = [
        "rotate",
        "conjugate",
        "multiply",
        "relinearize",
        "multiply_plain",
        "rescale",
        "add",
        "encode",
        "load",
        "switch",
        "copy",
    ]
    share_rows = []
    for r in results:
        seconds = r["operation_seconds_per_iteration"]
        step = float(np.median(r["step_seconds"]))
        refresh = float(np.median(r["refresh_seconds"]))
        total = step + refresh
        share_rows.append(
            [r["dim"]]
            + [f"{seconds.get(k, 0.0):.2f} ({100 * seconds.get(k, 0.0) / total:.0f}%)" for k in kinds]
            + [f"{refresh:.2f} ({100 * refresh / total:.0f}%)"]
        )
    print("seconds per iteration by kind of operation (share of the median iteration):")
    print(markdown_table(["features"] + kinds + ["refresh round trip"], share_rows))
    print()
    print(
        HETAL + "; here: 2 CPU cores, ring degree 2^14, no bootstrapping (the client refreshes), timed on this "
        "machine under the load shown above and below"
    )
    for r in results:  # the floor: the products the data force, at the measured cost of one
        seconds, ops = r["operation_seconds_per_iteration"], r["operations_per_iteration"]
        per_product = seconds.get("multiply", 0.0) / max(ops.get("multiply", 1), 1)
        print(
            f"floor at {r['dim']} features: {ops.get('multiply', 0):,.0f} ciphertext products at "
            f"{1e3 * per_product:.2f} ms = {seconds.get('multiply', 0.0):.2f} s of CPU per iteration "
            f"({r['threads']} threads share it)"
        )
    widest = results[-1]
    median = widest["comparison"]["summary"]["encrypted"]["median"]
    seconds = widest["operation_seconds_per_iteration"]
    ranked = sorted(((seconds.get(k, 0.0), k) for k in kinds), reverse=True)
    ranked_text = ", ".join(f"{k} {v:.1f} s" for v, k in ranked[:3])
    print(
        f"goal at {widest['dim']} features: <= {GOAL_SECONDS} s per iteration: "
        f"{'met' if median <= GOAL_SECONDS else 'not met'} ({median:.1f} s median); largest costs: {ranked_text}, "
        f"refresh {float(np.median(widest['refresh_seconds'])):.1f} s"
    )
    print(report.finish(args.json))


if __name__ == "__main__":
    main()
