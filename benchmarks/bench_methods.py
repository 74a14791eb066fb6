"""Cost of the three fine-tuning methods: step time, peak memory, optimizer state, adapter size, inference.

    python benchmarks/bench_methods.py [--backbones vit_base_patch16_224 encvit-tiny] [--methods full melo proposed]
                                       [--batch N] [--steps 10] [--warmup 3] [--device auto|cpu|cuda] [--amp auto]

Per backbone x method, each in its own subprocess (so that peak memory is that method's alone):

- step time: forward, backward and AdamW step on a synthetic float batch; median of `--steps` after `--warmup`;
- peak memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU the peak RSS (`ru_maxrss`). Both as the
  absolute peak and as the increment over the process's memory right after building the model;
- optimizer state: bytes of AdamW's exp_avg and exp_avg_sq after a step;
- adapter file: the size of what `save_adapter` writes;
- inference: the plain backbone, the LoRA-parametrized model (unmerged) and the model after `merge_lora`
  (merged), timed in interleaved rounds in the same process; median per model.

Ratios are to full fine-tuning (inference: to the plain backbone). Timm backbones get random weights
(no download); encvit-tiny loads its shipped weights. On CPU the default batch is 8, on CUDA 64; on CUDA the
step and inference run under autocast (bf16 where supported), as encvit.loop.fit does. On a busy machine pass
`--threads 1`: with more threads than free cores, torch's OpenMP workers wait on each other and a step can take
100x longer.
Goals on ViT-B/16: proposed step <= 0.75x full, peak memory <= 0.8x full, merged inference within 5% of plain.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from encvit.methods import LORA_METHODS, METHODS
from encvit.timing import add_device_options, device_from_options, synchronize, timed

DEFAULT_BACKBONES = ("vit_base_patch16_224", "encvit-tiny")
NUM_CLASSES = 10
RESULT_TAG = "BENCH_RESULT "
GOALS = {"step": 0.75, "peak": 0.80, "merged": 1.05}  # for vit_base_patch16_224


# ---- measuring one backbone x method (runs in a worker process) ------------------------------------------


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def _build(backbone: str) -> torch.nn.Module:
    from encvit.backbones import EMBEDDED, create_backbone

    # The shipped backbone has local weights; timm ones get random weights (offline, and timing is the same).
    return create_backbone(backbone, pretrained=backbone in EMBEDDED)


def _clone(model: torch.nn.Module, backbone: str, method: str) -> torch.nn.Module:
    """A separate copy of a prepared model, built afresh.

    Not copy.deepcopy: a deep copy shares torch's generated Parametrized* class with the original, so removing
    the copy's parametrization (merge_lora) would strip the original's as well.
    """
    from encvit.methods import prepare

    clone = prepare(_build(backbone), method, NUM_CLASSES)
    clone.load_state_dict(model.state_dict())
    return clone.to(next(model.parameters()).device).eval()


def _plain_copy(model: torch.nn.Module, backbone: str, method: str) -> torch.nn.Module:
    """The backbone without LoRA: a copy of `model` with the parametrizations removed, original weights kept."""
    from torch.nn.utils import parametrize

    from encvit.lora import qkv_layers

    plain = _clone(model, backbone, method)
    for qkv in qkv_layers(plain):
        if parametrize.is_parametrized(qkv, "weight"):
            parametrize.remove_parametrizations(qkv, "weight", leave_parametrized=False)
    return plain


def measure(backbone: str, method: str, batch: int, steps: int, warmup: int, device: str = "cpu",
            amp: str = "auto", infer_steps: int | None = None) -> dict:
    """Every figure of one backbone x method; run it in a fresh process for a meaningful peak memory."""
    from encvit.adapters import AdapterInfo, save_adapter
    from encvit.backbones import describe
    from encvit.lora import merge_lora
    from encvit.loop import autocast_for, backward_and_step, param_groups
    from encvit.methods import count_trainable, prepare

    dev = torch.device(device)
    torch.manual_seed(0)
    model = _build(backbone)
    geometry = describe(model, backbone)
    prepare(model, method, NUM_CLASSES)
    model.to(dev).train()
    size, channels = geometry.image_size, geometry.channels
    x = torch.randn(batch, channels, size, size, device=dev)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=dev)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-4, None), weight_decay=0.01)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    autocast, scaler = autocast_for(dev, amp)

    synchronize(dev)
    if dev.type == "cuda":
        base_memory = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base_memory = _rss_bytes()

    def step() -> None:
        with autocast:
            loss = criterion(model(x), y)
        backward_and_step(loss, optimizer, scaler)

    step_times = [timed(step, dev) for _ in range(warmup + steps)][warmup:]
    synchronize(dev)
    # Read the peak before anything else (inference copies, the adapter file) can raise it.
    peak_memory = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_rss_bytes()
    optimizer_bytes = sum(t.numel() * t.element_size() for state in optimizer.state.values()
                          for name, t in state.items() if name in ("exp_avg", "exp_avg_sq"))

    info = AdapterInfo(method=method, backbone=backbone, backbone_hash="0" * 16,  # same length as a real hash
                       class_names=[f"class{i}" for i in range(NUM_CLASSES)], image_size=size,
                       patch_size=geometry.patch_size, channels=channels,
                       rank=4 if method in LORA_METHODS else 0, alpha=8.0 if method in LORA_METHODS else 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        adapter_bytes = save_adapter(Path(tmp) / "adapter.safetensors", model, info).stat().st_size

    # Inference: interleaved rounds so that load on the machine hits every model alike.
    model.eval()
    if method in LORA_METHODS:
        models = {"plain": _plain_copy(model, backbone, method), "unmerged": model,
                  "merged": merge_lora(_clone(model, backbone, method))}
    else:
        models = {"plain": model}
    with torch.inference_mode():
        merge_error = (models["merged"](x) - model(x)).abs().max().item() if "merged" in models else None
        infer = {name: [] for name in models}
        names = list(models)
        for round_ in range(warmup + (infer_steps or steps)):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                def forward(net=models[name]):
                    with autocast:
                        net(x)
                seconds = timed(forward, dev)
                if round_ >= warmup:
                    infer[name].append(seconds)

    return {"backbone": backbone, "method": method, "batch": batch, "image_size": size,
            "trainable": count_trainable(model), "step_s": statistics.median(step_times),
            "peak_bytes": peak_memory, "base_bytes": base_memory, "increment_bytes": peak_memory - base_memory,
            "optimizer_bytes": optimizer_bytes, "adapter_bytes": adapter_bytes,
            "infer_s": {name: statistics.median(t) for name, t in infer.items()}, "merge_error": merge_error,
            "device": str(dev), "threads": torch.get_num_threads()}


# ---- the driver: one subprocess per backbone x method, then the table ------------------------------------
def run_worker(args, backbone: str, method: str) -> dict:
    """Measure one backbone x method in a fresh Python process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", backbone, method,
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", args.device, "--amp", args.amp, "--infer-steps", str(args.infer_steps or args.steps)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"measuring {backbone} / {method} failed (exit status {done.returncode})")
    return json.loads(lines[-1][len(RESULT_TAG):])


def mib(n: float) -> str:
    """Bytes as MiB (KiB below 1 MiB), for a table cell."""
    return f"{n / 2 ** 10:.1f} KiB" if n < 2 ** 20 else f"{n / 2 ** 20:,.1f} MiB"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}x"


def table(results: list[dict], device: str) -> str:
    """A Markdown table, one row per backbone x method, with ratios to full fine-tuning."""
    peak = "peak CUDA alloc" if device.startswith("cuda") else "peak RSS"
    increment = "alloc increment" if device.startswith("cuda") else "RSS increment"
    header = ["backbone", "method", "trainable", "step (ms)", "step/full", peak, "peak/full", increment,
              "incr/full", "AdamW state", "state/full", "adapter file", "adapter/full", "plain infer (ms)",
              "unmerged (ms)", "merged (ms)", "unmerged/plain", "merged/plain"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    full = {r["backbone"]: r for r in results if r["method"] == "full"}
    for r in results:
        f = full.get(r["backbone"], {})
        t = r["infer_s"]
        ms = lambda s: "–" if s is None else f"{s * 1e3:.1f}"
        cells = [r["backbone"], r["method"], f"{r['trainable']:,}",
                 ms(r["step_s"]), ratio(r["step_s"], f.get("step_s")),
                 mib(r["peak_bytes"]), ratio(r["peak_bytes"], f.get("peak_bytes")),
                 mib(r["increment_bytes"]), ratio(r["increment_bytes"], f.get("increment_bytes")),
                 mib(r["optimizer_bytes"]), ratio(r["optimizer_bytes"], f.get("optimizer_bytes")),
                 mib(r["adapter_bytes"]), ratio(r["adapter_bytes"], f.get("adapter_bytes")),
                 ms(t["plain"]), ms(t.get("unmerged")), ms(t.get("merged")),
                 ratio(t.get("unmerged"), t["plain"]), ratio(t.get("merged"), t["plain"])]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def goals(results: list[dict]) -> list[str]:
    """One line per goal and backbone that has both full and proposed rows."""
    lines = []
    for backbone in dict.fromkeys(r["backbone"] for r in results):
        rows = {r["method"]: r for r in results if r["backbone"] == backbone}
        if "full" not in rows or "proposed" not in rows:
            continue
        full, prop = rows["full"], rows["proposed"]
        checks = [("step time", prop["step_s"] / full["step_s"], GOALS["step"], "x full"),
                  ("peak memory", prop["peak_bytes"] / full["peak_bytes"], GOALS["peak"], "x full"),
                  ("merged inference", prop["infer_s"]["merged"] / prop["infer_s"]["plain"], GOALS["merged"],
                   "x plain")]
        for name, value, goal, unit in checks:
            verdict = "met" if value <= goal else "NOT met"
            lines.append(f"- {backbone}, proposed {name}: {value:.3f}{unit} (goal <= {goal:.2f}): {verdict}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES),
                        help="encvit-tiny or timm ViT names (random weights), space- or comma-separated")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (and inference rounds)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--infer-steps", type=int, default=None, help="timed inference rounds (default: --steps)")
    add_device_options(parser)
    parser.add_argument("--worker", nargs=2, metavar=("BACKBONE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = device_from_options(args, parser)
    on_cpu = not args.device.startswith("cuda")
    if args.batch is None:
        args.batch = 8 if on_cpu else 64
    if args.worker:
        result = measure(*args.worker, args.batch, args.steps, args.warmup, args.device, args.amp, args.infer_steps)
        print(RESULT_TAG + json.dumps(result))
        return
    backbones = [name for item in args.backbones for name in item.split(",") if name]

    print(f"command: python benchmarks/bench_methods.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    amp = "off" if on_cpu and args.amp != "bf16" else args.amp
    print(f"device {args.device}" + (f" ({torch.cuda.get_device_name(args.device)})" if not on_cpu else "")
          + f", batch {args.batch}" + (" (CPU)" if on_cpu else "") + f", AMP {amp}, torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} CPU threads; median of {args.steps} steps after "
          f"{args.warmup} warm-up; one subprocess per backbone x method", flush=True)
    results = []
    for backbone in backbones:
        for method in args.methods:
            print(f"  measuring {backbone} / {method} ...", file=sys.stderr, flush=True)
            results.append(run_worker(args, backbone, method))
    print()
    print(table(results, args.device))
    print()
    if on_cpu:
        print("Peak RSS: the worker process's maximum resident set (ru_maxrss), torch itself and the weights "
              "included; RSS increment: that peak minus the RSS right after building the model.")
    else:
        print("Peak CUDA alloc: torch.cuda.max_memory_allocated during the training steps, weights included; "
              "alloc increment: that peak minus the memory allocated right after building the model.")
    print("AdamW state: exp_avg + exp_avg_sq bytes after a step. Inference: batch "
          f"{args.batch}, plain = the backbone without LoRA, unmerged = LoRA as a parametrization, "
          "merged = after merge_lora.")
    errors = [r["merge_error"] for r in results if r["merge_error"] is not None]
    if errors:
        print(f"Merge check: max |merged - unmerged| logit difference {max(errors):.2e}.")
    lines = goals(results)
    if lines:
        print("\nGoals (set for vit_base_patch16_224):")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
