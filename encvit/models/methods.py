"""The three fine-tuning methods compared in the paper, defined by what each one trains.

- ``full``: every parameter.
- ``melo``: LoRA on q/v of every block + a new head; patch and position embeddings, class token
  and norms frozen.
- ``proposed``: melo's parts + the patch embedding's conv weight and bias; position embedding frozen.
- ``head``: the new head only (a linear probe; what the encrypted-head trainer of ``encvit.fhe`` produces).

Counts are read from ``requires_grad``, never from a table.
"""

from __future__ import annotations

from torch import nn

from ..common.errors import ConfigError
from .backbones import create_skeleton
from .lora import add_lora

METHODS = ("full", "melo", "proposed")  # the paper's comparison
ALL_METHODS = (*METHODS, "head")
LORA_METHODS = ("melo", "proposed")
PATCH_EMBED = "patch_embed.proj."


def check_method(method: str) -> str:
    """`method` if it is one of METHODS, else a ConfigError naming the choices."""
    if method not in ALL_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    return method


def is_trained(name: str, method: str) -> bool:
    """Whether the parameter called `name` is trained by `method`."""
    if method == "full":
        return True
    if method == "head":
        return name.startswith("head.")
    return "lora_" in name or name.startswith("head.") or (method == "proposed" and name.startswith(PATCH_EMBED))


PATCH_EMBED_METHODS = tuple(m for m in ALL_METHODS if is_trained(PATCH_EMBED + "weight", m))  # full, proposed


def prepare(model: nn.Module, method: str, num_classes: int, rank: int = 4, alpha: float = 8.0) -> nn.Module:
    """Give `model` a new head of `num_classes`, add LoRA for melo/proposed, and freeze what `method` keeps."""
    check_method(method)
    if num_classes < 1:
        raise ConfigError(f"the number of classes must be at least 1, got {num_classes}")
    model.reset_classifier(num_classes)
    if method in LORA_METHODS:
        add_lora(model, rank, alpha)
    for name, param in model.named_parameters():
        param.requires_grad_(is_trained(name, method))
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that training updates, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameters (from requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_all_methods(build, num_classes: int, rank: int = 4, alpha: float = 8.0) -> dict[str, int]:
    """Trainable parameters per method; `build()` makes a fresh backbone (meta tensors are fine)."""
    return {method: count_trainable(prepare(build(), method, num_classes, rank, alpha)) for method in METHODS}


PAPER_UNIT = 2**20  # the paper's "M": 86,567,656 / 2^20 = 82.56
PAPER_COUNTS_M = {"full": 82.56, "melo": 0.15, "proposed": 0.71}  # ViT-B/16, as printed in the paper


def parameter_table(backbone: str, num_classes: int = 10, rank: int = 4, alpha: float = 8.0) -> dict[str, dict]:
    """Per method: trainable parameters exact, in 10^6, in 2^20 and as % of full fine-tuning."""
    counts = count_all_methods(lambda: create_skeleton(backbone), num_classes, rank, alpha)
    return {
        method: {
            "trainable": n,
            "millions": n / 1e6,
            "paper_m": n / PAPER_UNIT,
            "percent_of_full": 100.0 * n / counts["full"],
        }
        for method, n in counts.items()
    }
