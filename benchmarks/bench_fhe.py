"""Encrypted head training speed: packed ciphertexts against the naive one-ciphertext-per-sample baseline.

    python benchmarks/bench_fhe.py [--dataset mnist5k] [--limit N] [--batch-size 1024] [--epochs 1]
                                   [--naive-samples 4] [--no-pretrained]

Each variant runs in its own process (so that its peak memory is its own) on features of the shipped backbone:
plaintext numpy training with the same polynomial softmax, the naive TenSEAL trainer (timed on a few samples and
scaled to an epoch: a full naive epoch takes hours), and the packed trainer (a full epoch, refreshes included).
Sizes also come from the environment: ENCVIT_BENCH_LIMIT, ENCVIT_BENCH_EPOCHS, ENCVIT_BENCH_NAIVE_SAMPLES.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    /proc's VmHWM belongs to the process image; ru_maxrss would carry over the parent's peak through fork/exec.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_features(args):
    """Features of the shipped backbone (extracted once and cached by encvit)."""
    import torch

    from encvit.backbones import create_backbone
    from encvit.fhe.features import dataset_features

    torch.manual_seed(0)
    model = create_backbone("encvit-tiny", pretrained=args.pretrained)
    return dataset_features("encvit-tiny", args.dataset, args.limit, model=model)


def config_of(args):
    from encvit.fhe.train import FHEConfig

    return FHEConfig(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     limit=args.limit, pretrained=args.pretrained)


def worker(args) -> dict:
    from encvit.fhe.head import FeatureSplits, nag_step
    from encvit.fhe.naive import time_naive_step
    from encvit.fhe.train import setup, train_encrypted, train_reference

    # Features come from a file: the workers never import torch, so their memory is the trainer's own.
    features, config = FeatureSplits.load(args.features), config_of(args)
    s = setup(features, config)
    n = len(s.x)
    if args.worker == "plain":
        run = train_reference(features, config)
        seconds = float(np.mean([r["seconds"] for r in run.rows]))
        return {"epoch_seconds": seconds, "iteration_seconds": seconds / len(s.schedule.batches(0)),
                "test_acc": run.rows[-1]["test_acc"], "weights": run.weights.tolist()}
    if args.worker == "naive":
        index = s.schedule.samples(s.schedule.batches(0)[0])[:args.naive_samples]
        zero = np.zeros((s.y.shape[1], s.x.shape[1]))
        r = time_naive_step(s.x[index], s.y[index], zero, zero, s.poly, config.lr, config.momentum)
        w_ref, _ = nag_step(zero, zero, s.x[index], s.y[index], s.poly, config.lr, config.momentum)
        per_sample = r["seconds_per_sample"]
        return {"epoch_seconds": per_sample * n, "iteration_seconds": per_sample * s.schedule.blocks_per_batch
                * len(s.schedule.blocks[0]), "seconds_per_sample": per_sample, "samples": len(index),
                "max_weight_diff": float(np.abs(r["w"] - w_ref).max())}
    start = time.perf_counter()
    run = train_encrypted(features, config, progress=False)
    total = time.perf_counter() - start
    reference = train_reference(features, config)
    st = run.stats
    return {"epoch_seconds": float(np.mean([r["seconds"] for r in run.rows])),
            "iteration_seconds": st["seconds_per_iteration"], "total_seconds": total, "stats": st,
            "test_acc": run.rows[-1]["test_acc"], "plain_test_acc": reference.rows[-1]["test_acc"],
            "max_weight_diff": float(np.abs(run.weights - reference.weights).max()),
            "max_weight": float(np.abs(reference.weights).max())}


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--limit", type=int, default=int(env("ENCVIT_BENCH_LIMIT", 0)) or None,
                        help="images per split (default: all)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=None, help="default: FHEConfig's")
    parser.add_argument("--epochs", type=int, default=int(env("ENCVIT_BENCH_EPOCHS", 1)))
    parser.add_argument("--naive-samples", type=int, default=int(env("ENCVIT_BENCH_NAIVE_SAMPLES", 4)))
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    parser.add_argument("--worker", choices=["plain", "naive", "packed"], help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lr is None:
        from encvit.fhe.train import FHEConfig

        args.lr = FHEConfig.lr
    if args.worker:
        result = worker(args)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    features = load_features(args)
    shared = tempfile.NamedTemporaryFile(suffix=".npz", delete=False)
    shared.write(features.to_bytes())
    shared.close()
    command = " ".join(["python benchmarks/bench_fhe.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(f"{features.dataset}: {len(features.train[1])} training samples, {features.dim} features, "
          f"{len(features.classes)} classes; batch {args.batch_size}; {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}), numpy {np.__version__}")
    results = {}
    for variant in ("plain", "naive", "packed"):
        argv = [sys.executable, __file__, "--worker", variant, "--dataset", args.dataset, "--batch-size",
                str(args.batch_size), "--lr", str(args.lr), "--epochs", str(args.epochs), "--naive-samples",
                str(args.naive_samples), "--features", shared.name]
        argv += (["--limit", str(args.limit)] if args.limit else []) + ([] if args.pretrained else ["--no-pretrained"])
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            os.unlink(shared.name)
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])

    os.unlink(shared.name)
    packed, naive, plain = results["packed"], results["naive"], results["plain"]
    st = packed["stats"]
    ck = st["ckks"]
    print(f"CKKS: ring degree {ck['poly_modulus_degree']} ({ck['slots']} slots), coefficient moduli "
          f"{ck['coeff_mod_bit_sizes']} = {ck['total_modulus_bits']} bits, scale 2^{ck['scale_bits']}: "
          f"{ck['security_bits']}-bit security (HE standard: at most {ck['max_bits_for_128']} bits for 128-bit)")
    lay = st["layout"]
    print(f"packed layout: {lay['samples_per_ciphertext']} samples x {lay['features_per_ciphertext']} features x "
          f"{lay['class_slots']} class slots per ciphertext, {lay['ciphertexts_per_block']} ciphertexts per block; "
          f"{st['levels_per_iteration']} levels per iteration, so the weights are refreshed every iteration")
    print()
    print("| trainer | s / epoch | s / iteration | peak RSS (MB) | epoch / packed | notes |")
    print("|---|---|---|---|---|---|")
    rows = [("plaintext numpy", plain, "same polynomial softmax and schedule"),
            ("naive TenSEAL", naive, f"{naive['seconds_per_sample']:.2f} s per sample, timed on {naive['samples']} "
             f"samples and scaled to {len(features.train[1])}; peak RSS of that short run"),
            ("packed (this kit)", packed, f"{st['refreshes']} refreshes in {st['refresh_seconds']:.1f} s included; "
             f"{st['operations'].get('rotate', 0) // max(st['iterations'], 1)} rotations per iteration")]
    for name, r, note in rows:
        print(f"| {name} | {r['epoch_seconds']:.3g} | {r['iteration_seconds']:.3g} | {r['peak_rss_mb']:.0f} | "
              f"{r['epoch_seconds'] / packed['epoch_seconds']:.3g}x | {note} |")
    print()
    print(f"speed-up of packed over naive: {naive['epoch_seconds'] / packed['epoch_seconds']:.0f}x per epoch "
          f"(goal >= 10x); packed is {packed['epoch_seconds'] / plain['epoch_seconds']:.0f}x slower than plaintext")
    lo, hi = st["hetal_seconds_per_iteration"]
    print(f"per iteration: packed {packed['iteration_seconds']:.2f} s here (batch {st['effective_batch_size']}, "
          f"{features.dim} features, no bootstrapping, {os.cpu_count()} CPU cores) vs HETAL's reported {lo}-{hi} s "
          f"(ring degree 2^16 with bootstrapping, 768 features, on the HETAL authors' hardware, not this machine)")
    print(f"one-off costs of packed: keys {st['timings']['keygen_seconds']:.1f} s, client encryption "
          f"{st['timings']['client_encrypt_seconds']:.1f} s, server loading "
          f"{st['timings']['server_load_seconds']:.1f} s; "
          f"{st['bytes']['client_to_server']['total'] / 1e6:.0f} MB to the server, "
          f"{st['bytes']['server_to_client']['total'] / 1e6:.1f} MB back")
    print(f"checks: packed vs plaintext weights max |diff| {packed['max_weight_diff']:.2e} (largest weight "
          f"{packed['max_weight']:.2f}); test accuracy packed {packed['test_acc']:.2f}% vs plaintext "
          f"{packed['plain_test_acc']:.2f}% after {args.epochs} epoch(s); naive step vs numpy max |diff| "
          f"{naive['max_weight_diff']:.2e}")


if __name__ == "__main__":
    main()
