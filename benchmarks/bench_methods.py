"""Cost of the three fine-tuning methods: step time, peak memory, optimizer state, adapter size, inference.

    python benchmarks/bench_methods.py [--backbones vit_small_patch16_224 encvit-tiny] [--methods full melo proposed]
                                       [--batch N] [--repeats 5] [--warmup 1] [--memory-repeats 2]
                                       [--clock wall|cpu] [--threads N] [--device auto|cpu|cuda] [--json PATH]

Per backbone, on a synthetic float batch, with ratios computed per round and summarised as median (min–max):

- step time (one process per backbone): every method's model is built in the same process and their training
  steps (forward, backward, AdamW step) run interleaved, full melo proposed, melo proposed full, ..., for
  `--repeats` rounds after `--warmup` untimed ones; each round gives one ratio to full fine-tuning;
- inference (same process, after the training models are freed): the plain backbone and, per LoRA method,
  the LoRA-parametrized model (unmerged) and the model after `merge_lora` (merged), interleaved the same way;
  ratios to the plain backbone;
- peak memory: each method in a fresh process of its own (two training steps, so that the gradients and AdamW
  state of the first step are alive during the second forward pass), `--memory-repeats` times with the
  processes alternating; on CUDA `torch.cuda.max_memory_allocated`, on CPU the peak RSS (VmHWM, with glibc's mmap
  threshold fixed so that freed activations leave the heap). Both as the absolute peak and as the increment over
  the process's memory right after building the model;
- optimizer state (AdamW's exp_avg and exp_avg_sq) and adapter file size: exact, from the memory processes.

Timm backbones get random weights (`pretrained=False`: no download); encvit-tiny loads its shipped weights. On
CPU the default batch is 8, on CUDA 64; on CUDA the step and inference run under autocast (bf16 where
supported), as encvit.training.loop.fit does. On a busy machine pass `--threads 1` (with more threads than free cores,
torch's OpenMP workers wait on each other) and `--clock cpu` (CPU seconds: the time other processes hold the
cores is not counted). Goals, judged on the median: proposed step <= 0.75x full, peak memory <= 0.8x full,
merged inference within 5% of plain (set for ViT-B/16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from encvit.common.timing import (
    CLOCKS,
    Report,
    add_device_options,
    add_repeat_options,
    argv_of,
    as_summary,
    check_repeat_options,
    compare,
    device_from_options,
    interleave,
    markdown_table,
    spread_cell,
    synchronize,
)
from encvit.models.methods import LORA_METHODS, METHODS

DEFAULT_BACKBONES = ("vit_small_patch16_224", "encvit-tiny")
NUM_CLASSES = 10
RESULT_TAG = "BENCH_RESULT "
GOALS = {"step": 0.75, "peak": 0.80, "merged": 1.05}  # set for vit_base_patch16_224
FLOOR, SUMMED, FORWARD = "floor", ", summed weight", "forward only"  # the --references candidates
# glibc otherwise raises its mmap threshold as large blocks are freed and keeps them in the heap, so the peak RSS
# would wander by ~1% from process to process; fixed, the peak is what the steps hold (run to run within 0.1 MiB).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MEMORY_STEPS = 2  # the second forward pass runs with the first step's gradients and AdamW state alive


# ---- building models (in the worker processes) -----------------------------------------------------------


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    """This process's peak resident memory; VmHWM, since ru_maxrss can carry the parent's peak over exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def _build(backbone: str) -> torch.nn.Module:
    from encvit.models.backbones import EMBEDDED, create_backbone

    torch.manual_seed(0)  # every method starts from the same weights
    # The shipped backbone has local weights; timm ones get random weights (offline, and timing is the same).
    return create_backbone(backbone, pretrained=backbone in EMBEDDED)


def _clone(model: torch.nn.Module, backbone: str, method: str) -> torch.nn.Module:
    """A separate copy of a prepared model, built afresh.

    Not copy.deepcopy: a deep copy shares torch's generated Parametrized* class with the original, so removing
    the copy's parametrization (merge_lora) would strip the original's as well.
    """
    from encvit.models.methods import prepare

    clone = prepare(_build(backbone), method, NUM_CLASSES)
    clone.load_state_dict(model.state_dict())
    return clone.to(next(model.parameters()).device).eval()


def _plain_copy(model: torch.nn.Module, backbone: str, method: str) -> torch.nn.Module:
    """The backbone without LoRA: a copy of `model` with the parametrizations removed, original weights kept."""
    from torch.nn.utils import parametrize

    from encvit.models.lora import qkv_layers

    plain = _clone(model, backbone, method)
    for qkv in qkv_layers(plain):
        if parametrize.is_parametrized(qkv, "weight"):
            parametrize.remove_parametrizations(qkv, "weight", leave_parametrized=False)
    return plain


class _Trainer:
    """One method's model, optimizer and synthetic batch, with a `step()` as encvit.training.loop.fit takes it."""

    def __init__(self, backbone: str, method: str, batch: int, device: torch.device, amp: str):
        from encvit.models.backbones import describe
        from encvit.models.methods import is_trained, prepare
        from encvit.training.loop import autocast_for, param_groups

        self.model = _build(backbone)
        self.geometry = describe(self.model, backbone)
        if method == FLOOR:  # what proposed trains, minus LoRA: the backward pass's cost through frozen blocks
            prepare(self.model, "full", NUM_CLASSES)
            for name, param in self.model.named_parameters():
                param.requires_grad_(is_trained(name, "proposed"))
        else:
            prepare(self.model, method.removesuffix(SUMMED), NUM_CLASSES)
        if method.endswith(SUMMED):
            from torch.nn.functional import linear

            from encvit.models.lora import qkv_layers

            for qkv in qkv_layers(self.model):  # multiply by W + scale * BA (the parametrized weight) instead
                type(qkv).forward = lambda layer, tokens: linear(tokens, layer.weight, layer.bias)
        self.model.to(device).train()
        size, channels = self.geometry.image_size, self.geometry.channels
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, channels, size, size, generator=generator).to(device)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 1e-4, None), weight_decay=0.01)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        self.autocast, self.scaler = autocast_for(device, amp)

    def step(self) -> None:
        """Forward, backward and AdamW step on the synthetic batch."""
        from encvit.training.loop import backward_and_step

        with self.autocast:
            loss = self.criterion(self.model(self.x), self.y)
        backward_and_step(loss, self.optimizer, self.scaler)


# ---- the two kinds of worker -----------------------------------------------------------------------------


def measure_speed(
    backbone: str,
    methods: list[str],
    batch: int,
    repeats: int,
    warmup: int,
    device: str = "cpu",
    amp: str = "auto",
    clock: str = "wall",
    references: bool = False,
) -> dict:
    """Training steps of every method, then inference of plain / unmerged / merged, each interleaved.

    `references` adds to the step rounds: the floor (patch embedding and head trained, no LoRA), proposed with
    the qkv layer multiplying by the summed weight, and the floor model's forward pass alone."""
    from encvit.models.lora import merge_lora

    dev = torch.device(device)
    names = methods + ([FLOOR, "proposed" + SUMMED] if references else [])
    trainers = {name: _Trainer(backbone, name, batch, dev, amp) for name in names}
    baseline = "full" if "full" in methods else methods[0]
    candidates = {name: t.step for name, t in trainers.items()}
    if references:

        def forward_only(trainer=trainers[FLOOR]):
            with torch.no_grad(), trainer.autocast:
                trainer.model(trainer.x)

        candidates[FORWARD] = forward_only
    steps = interleave(candidates, repeats, warmup, dev, CLOCKS[clock])

    x, autocast = trainers[methods[0]].x, trainers[methods[0]].autocast
    lora = {m: trainers[m].model.eval() for m in methods if m in LORA_METHODS}
    if lora:
        method = next(iter(lora))
        plain = _plain_copy(lora[method], backbone, method)
    else:
        plain = trainers[methods[0]].model.eval()
    del trainers  # frees full fine-tuning's gradients and AdamW state before the inference models are built
    models = {"plain": plain}
    merge_error = {}
    with torch.inference_mode():
        for method, model in lora.items():
            merged = merge_lora(_clone(model, backbone, method))
            merge_error[method] = (merged(x) - model(x)).abs().max().item()
            models[f"{method} unmerged"], models[f"{method} merged"] = model, merged

        def forward(net):
            def run():
                with autocast:
                    net(x)

            return run

        infer = interleave({name: forward(net) for name, net in models.items()}, repeats, warmup, dev, CLOCKS[clock])
    return {
        "backbone": backbone,
        "batch": batch,
        "baseline": baseline,
        "step": compare(steps, baseline),
        "infer": compare(infer, "plain"),
        "merge_error": merge_error,
    }


def measure_memory(backbone: str, method: str, batch: int, device: str = "cpu", amp: str = "auto") -> dict:
    """Peak memory of `MEMORY_STEPS` training steps of one method, optimizer state and adapter size.

    Run it in a fresh process: the peak is the process's own."""
    from encvit.models.adapters import AdapterInfo, save_adapter
    from encvit.models.methods import count_trainable

    dev = torch.device(device)
    trainer = _Trainer(backbone, method, batch, dev, amp)
    synchronize(dev)
    if dev.type == "cuda":
        base_memory = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base_memory = _rss_bytes()
    for _ in range(MEMORY_STEPS):
        trainer.step()
    synchronize(dev)
    # Read the peak before anything else (the adapter file) can raise it.
    peak_memory = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_rss_bytes()
    optimizer_bytes = sum(
        t.numel() * t.element_size()
        for state in trainer.optimizer.state.values()
        for name, t in state.items()
        if name in ("exp_avg", "exp_avg_sq")
    )
    geometry = trainer.geometry
    info = AdapterInfo(
        method=method,
        backbone=backbone,
        backbone_hash="0" * 16,  # same length as a real hash
        class_names=[f"class{i}" for i in range(NUM_CLASSES)],
        image_size=geometry.image_size,
        patch_size=geometry.patch_size,
        channels=geometry.channels,
        rank=4 if method in LORA_METHODS else 0,
        alpha=8.0 if method in LORA_METHODS else 0.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        adapter_bytes = save_adapter(Path(tmp) / "adapter.safetensors", trainer.model, info).stat().st_size
    return {
        "backbone": backbone,
        "method": method,
        "trainable": count_trainable(trainer.model),
        "peak_bytes": peak_memory,
        "base_bytes": base_memory,
        "increment_bytes": peak_memory - base_memory,
        "optimizer_bytes": optimizer_bytes,
        "adapter_bytes": adapter_bytes,
        "image_size": geometry.image_size,
    }


# ---- the driver: workers in fresh processes, then the tables ---------------------------------------------


def run_worker(args, *worker: str) -> dict:
    """Run one worker (`speed BACKBONE` or `memory BACKBONE METHOD`) in a fresh Python process."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        *worker,
        "--methods",
        *args.methods,
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--amp",
        args.amp,
        "--clock",
        args.clock,
    ]
    if args.references:
        command.append("--references")
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {**MEMORY_ENV, **os.environ} if worker[0] == "memory" else None  # a user's own setting wins
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"measuring {' / '.join(worker[1:])} ({worker[0]}) failed (exit status {done.returncode})")
    return json.loads(lines[-1][len(RESULT_TAG) :])


def measure_backbone(args, backbone: str) -> dict:
    """Speed in one process; memory in one process per method, `--memory-repeats` times, order rotating."""
    print(f"  {backbone}: speed, {len(args.methods)} methods interleaved ...", file=sys.stderr, flush=True)
    row = run_worker(args, "speed", backbone)
    memory = {method: [] for method in args.methods}
    for repeat in range(args.memory_repeats):
        shift = repeat % len(args.methods)
        for method in args.methods[shift:] + args.methods[:shift]:
            print(
                f"  {backbone}: peak memory of {method} ({repeat + 1}/{args.memory_repeats}) ...",
                file=sys.stderr,
                flush=True,
            )
            memory[method].append(run_worker(args, "memory", backbone, method))
    baseline = row["baseline"]
    for key in ("peak_bytes", "increment_bytes"):
        row[key.removesuffix("_bytes")] = compare({m: [r[key] for r in runs] for m, runs in memory.items()}, baseline)
    for key in ("trainable", "optimizer_bytes", "adapter_bytes"):  # exact: the same in every process
        row[key] = {m: runs[0][key] for m, runs in memory.items()}
    row["image_size"] = memory[baseline][0]["image_size"]
    return row


def mib(n: float) -> str:
    """Bytes as MiB (KiB below 1 MiB), for a table cell."""
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:,.1f} MiB"


def exact_ratio(a: float, b: float) -> str:
    return "–" if not b else f"{a / b:.3f}x"


def training_table(results: list[dict], device: str) -> str:
    """One row per backbone x method: step time, peak memory, optimizer state, adapter; ratios to full."""
    peak = "peak CUDA alloc (MiB)" if device.startswith("cuda") else "peak RSS (MiB)"
    increment = "alloc increment (MiB)" if device.startswith("cuda") else "RSS increment (MiB)"
    header = [
        "backbone",
        "method",
        "trainable",
        "step (ms)",
        "step/full",
        peak,
        "peak/full",
        increment,
        "incr/full",
        "AdamW state",
        "state/full",
        "adapter file",
        "adapter/full",
    ]
    rows = []
    for r in results:
        base = r["baseline"]
        for method in r["trainable"]:
            cells = [
                r["backbone"],
                method,
                f"{r['trainable'][method]:,}",
                spread_cell(r["step"]["summary"][method], digits=0, factor=1e3),
                spread_cell(r["step"]["ratios"][method], "x"),
                spread_cell(r["peak"]["summary"][method], digits=0, factor=2**-20),
                spread_cell(r["peak"]["ratios"][method], "x"),
                spread_cell(r["increment"]["summary"][method], digits=0, factor=2**-20),
                spread_cell(r["increment"]["ratios"][method], "x"),
                mib(r["optimizer_bytes"][method]),
                exact_ratio(r["optimizer_bytes"][method], r["optimizer_bytes"][base]),
                mib(r["adapter_bytes"][method]),
                exact_ratio(r["adapter_bytes"][method], r["adapter_bytes"][base]),
            ]
            rows.append(cells)
    return markdown_table(header, rows, text_columns=2)


def inference_table(results: list[dict]) -> str:
    """One row per backbone x model (plain, then each LoRA method unmerged and merged); ratios to plain."""
    rows = [
        [
            r["backbone"],
            name,
            spread_cell(r["infer"]["summary"][name], digits=1, factor=1e3),
            spread_cell(r["infer"]["ratios"][name], "x", digits=3),
        ]
        for r in results
        for name in r["infer"]["samples"]
    ]
    return markdown_table(["backbone", "model", "forward (ms)", "/plain"], rows, text_columns=2)


def references_table(results: list[dict]) -> str:
    """Where a step's time goes: full, proposed, proposed with the summed weight, the floor, a forward pass."""
    names = ("full", "proposed", "proposed" + SUMMED, FLOOR, FORWARD)
    rows = [
        [
            r["backbone"],
            name,
            spread_cell(r["step"]["summary"][name], digits=0, factor=1e3),
            spread_cell(r["step"]["ratios"][name], "x"),
        ]
        for r in results
        if FLOOR in r["step"]["samples"]
        for name in names
        if name in r["step"]["samples"]
    ]
    return markdown_table(["backbone", "step", "time (ms)", "/full"], rows, text_columns=2) if rows else ""


def goals(results: list[dict]) -> list[str]:
    """One line per goal and backbone that has both full and proposed rows, judged on the median."""
    lines = []
    for r in results:
        if "full" not in r["step"]["samples"] or "proposed" not in r["step"]["samples"]:
            continue
        checks = [
            ("step time", r["step"]["ratios"]["proposed"], GOALS["step"], " full"),
            ("peak memory", r["peak"]["ratios"]["proposed"], GOALS["peak"], " full"),
            ("merged inference", r["infer"]["ratios"]["proposed merged"], GOALS["merged"], " plain"),
        ]
        for name, value, goal, unit in checks:
            verdict = "met" if as_summary(value).median <= goal else "NOT met"
            lines.append(
                f"- {r['backbone']}, proposed {name}: {spread_cell(value, 'x', digits=3)} of{unit} "
                f"(goal <= {goal:.2f}x on the median): {verdict}"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=list(DEFAULT_BACKBONES),
        help="encvit-tiny or timm ViT names (random weights), space- or comma-separated; "
        "e.g. vit_base_patch16_224 (ViT-B/16: ~15 s a full step on one CPU thread)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    add_repeat_options(parser, repeats=5, warmup=1)
    parser.add_argument(
        "--memory-repeats", type=int, default=2, help="processes per method for peak memory, alternating (default 2)"
    )
    add_device_options(parser)
    parser.add_argument(
        "--references",
        action="store_true",
        help="also time, in the same rounds: the floor (patch embedding and head trained, no LoRA), "
        "proposed multiplying by the summed qkv weight, and a forward pass alone",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = device_from_options(args, parser)
    check_repeat_options(args, parser)
    if args.memory_repeats < 1:
        parser.error(f"--memory-repeats must be at least 1, got {args.memory_repeats}")
    on_cpu = not args.device.startswith("cuda")
    if args.batch is None:
        args.batch = 8 if on_cpu else 64
    args.methods = list(dict.fromkeys(args.methods))
    if args.worker:
        kind, backbone, *method = args.worker
        if kind == "speed":
            result = measure_speed(
                backbone,
                args.methods,
                args.batch,
                args.repeats,
                args.warmup,
                args.device,
                args.amp,
                args.clock,
                args.references,
            )
        else:
            result = measure_memory(backbone, method[0], args.batch, args.device, args.amp)
        print(RESULT_TAG + json.dumps(result))
        return
    backbones = [name for item in args.backbones for name in item.split(",") if name]

    amp = "off" if on_cpu and args.amp != "bf16" else args.amp
    report = Report(
        "benchmarks/bench_methods.py",
        argv_of(argv),
        settings={
            "backbones": backbones,
            "methods": args.methods,
            "batch": args.batch,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "clock": args.clock,
            "memory_repeats": args.memory_repeats,
            "references": args.references,
            "device": args.device,
            "amp": amp,
            "threads": args.threads or torch.get_num_threads(),
        },
    )
    print(report.header())
    print(
        f"device {args.device}"
        + (f" ({torch.cuda.get_device_name(args.device)})" if not on_cpu else "")
        + f", batch {args.batch}"
        + (" (CPU)" if on_cpu else "")
        + f", AMP {amp}, "
        f"{args.threads or torch.get_num_threads()} CPU threads, {args.clock} clock; median (min–max) of "
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up; peak memory: one process per method, "
        f"{args.memory_repeats} alternating",
        flush=True,
    )
    for backbone in backbones:
        report.results.append(measure_backbone(args, backbone))
    results = report.results
    print()
    print(training_table(results, args.device))
    print()
    print(inference_table(results))
    print()
    if args.references:
        print(
            "Where a step's time goes (same rounds as the steps above): floor = the patch embedding and head "
            "trained, no LoRA (the backward pass through frozen blocks still computes every input gradient); "
            "summed weight = the qkv layer multiplies by W + scale * BA, so its backward forms the full qkv "
            "weight gradient; forward only = the floor model's forward pass without gradients.\n"
        )
        print(references_table(results))
        print()
    seconds = "CPU seconds of the process" if args.clock == "cpu" else "wall time"
    print(
        f"Step and forward times are {seconds}; every ratio is computed per round (per memory repetition) and "
        "then summarised: median (min–max)."
    )
    if on_cpu:
        print(
            "Peak RSS: the worker process's maximum resident set (VmHWM; MALLOC_MMAP_THRESHOLD_=131072, so that "
            "glibc returns freed activations), torch itself and the weights included; RSS increment: that peak "
            "minus the RSS right after building the model."
        )
    else:
        print(
            "Peak CUDA alloc: torch.cuda.max_memory_allocated during the training steps, weights included; "
            "alloc increment: that peak minus the memory allocated right after building the model."
        )
    print(
        f"AdamW state: exp_avg + exp_avg_sq bytes after a step. Inference: batch {args.batch}, plain = the "
        "backbone without LoRA, unmerged = LoRA as a parametrization, merged = after merge_lora."
    )
    errors = [e for r in results for e in r["merge_error"].values()]
    if errors:
        print(f"Merge check: max |merged - unmerged| logit difference {max(errors):.2e}.")
    lines = goals(results)
    if lines:
        print("\nGoals (set for vit_base_patch16_224):")
        print("\n".join(lines))
    print(report.finish(args.json))


if __name__ == "__main__":
    main()
