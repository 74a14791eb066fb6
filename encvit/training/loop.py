"""One training loop for every method, single process or DistributedDataParallel, CPU or CUDA.

Datasets live in memory as uint8 tensors; each batch is moved to the device and resized, encrypted and
normalised there (``BatchPreprocess``), so the cipher costs one index gather per batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from ..data.datasets import ImageSet


@dataclass
class LoopSettings:
    """What the loop needs beyond the model and data."""

    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    patch_lr: float | None = None
    hflip: bool = False
    amp: str = "auto"
    seed: int = 0
    progress: bool = True
    test_every_epoch: bool = True  # False: the test set is evaluated after the last epoch only (faster grids)


class _Batches(Dataset):
    """Indexing by a list of indices returns a whole batch: no per-image collation."""

    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images.images[index], self.images.labels[index]


def distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device() -> torch.device:
    """CUDA (this process's local GPU under torchrun) when present, else CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def autocast_for(device: torch.device, amp: str):
    """An autocast context: bf16 (or fp16 without bf16 support) on CUDA; on CPU only when asked (`bf16`)."""
    if amp == "off" or (device.type == "cpu" and amp != "bf16"):
        return contextlib.nullcontext(), None
    if device.type == "cuda" and amp == "auto" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


def batches(
    images: ImageSet, batch_size: int, shuffle: bool, seed: int, epoch: int, world: int, rank: int, device: torch.device
) -> DataLoader:
    """Whole batches of uint8 images and labels; sharded across processes under DDP."""
    data = _Batches(images)
    if world > 1:
        sampler = DistributedSampler(data, world, rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed * 10007 + epoch))
    else:
        sampler = SequentialSampler(data)
    # Workers would only copy in-memory tensors between processes: the main process batches faster.
    return DataLoader(
        data,
        sampler=BatchSampler(sampler, batch_size, drop_last=False),
        batch_size=None,
        num_workers=0,
        pin_memory=device.type == "cuda",
    )


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """One optimizer step from `loss`, through the fp16 gradient scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the base learning rate, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: nn.Module, lr: float, patch_lr: float | None) -> list[dict]:
    """Trainable parameters; the patch embedding gets its own learning rate when `patch_lr` is set."""
    patch, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (patch if patch_lr is not None and name.startswith("patch_embed.") else rest).append(p)
    groups = [{"params": rest, "lr": lr}]
    if patch:
        groups.append({"params": patch, "lr": patch_lr})
    return groups


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: ImageSet,
    preprocess: nn.Module,
    device: torch.device,
    batch_size: int = 256,
    amp: str = "auto",
) -> float:
    """Top-1 accuracy (in %) of `model` on `images`."""
    if len(images) == 0:
        return float("nan")
    model.eval()
    autocast, _ = autocast_for(device, amp)
    correct = 0
    for x, y in batches(images, batch_size, False, 0, 0, 1, 0, device):
        x = preprocess(x.to(device, non_blocking=True))
        with autocast:
            correct += (model(x).argmax(1).cpu() == y).sum().item()
    return 100.0 * correct / len(images)


def fit(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet,
    test: ImageSet | None,
    preprocess: nn.Module,
    settings: LoopSettings,
    on_epoch=None,
    augment: nn.Module | None = None,
) -> list[dict]:
    """Train the parameters of `model` that require grad; returns one metrics row per epoch.

    `on_epoch(row)` is called on rank 0 after each epoch (e.g. to write metrics.csv); `augment` maps a uint8
    training batch to another before preprocessing (e.g. pretraining's colour tints).
    """
    rank, world = distributed()
    device = pick_device()
    torch.manual_seed(settings.seed)
    model.to(device)
    preprocess.to(device)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(
        param_groups(model, settings.lr, settings.patch_lr), weight_decay=settings.weight_decay
    )
    steps_per_epoch = math.ceil(len(train) / (settings.batch_size * world))
    scheduler = warmup_cosine(
        optimizer, int(settings.warmup_epochs * steps_per_epoch), settings.epochs * steps_per_epoch
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    autocast, scaler = autocast_for(device, settings.amp)
    flip_generator = torch.Generator(device=device).manual_seed(settings.seed)
    rows = []
    for epoch in range(settings.epochs):
        trained.train()
        start, total_loss, seen = time.perf_counter(), 0.0, 0
        loader = batches(train, settings.batch_size, True, settings.seed, epoch, world, rank, device)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{settings.epochs}",
            leave=False,
            disable=not settings.progress or rank != 0 or None,
        )
        for x, y in bar:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if settings.hflip:  # before encryption: the key acts on the augmented image
                flip = torch.rand(len(x), device=device, generator=flip_generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            if augment is not None:
                x = augment(x)
            x = preprocess(x)
            with autocast:
                loss = criterion(trained(x), y)
            backward_and_step(loss, optimizer, scaler)
            scheduler.step()
            total_loss += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(seen, 1),
            "val_acc": evaluate(model, val, preprocess, device, amp=settings.amp),
            "test_acc": evaluate(model, test, preprocess, device, amp=settings.amp)
            if test is not None and (settings.test_every_epoch or epoch + 1 == settings.epochs)
            else float("nan"),
            "seconds": seconds,
            "lr": optimizer.param_groups[0]["lr"],
        }
        rows.append(row)
        if rank == 0 and on_epoch is not None:
            on_epoch(row)
    model.cpu()
    return rows
