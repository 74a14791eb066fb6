"""LoRA on the q and v slices of timm's fused ``attn.qkv`` weight, as a parametrization (as MeLo does).

The layer stays a plain ``nn.Linear``: its weight is computed as
``W_qkv + scale * [B_q A_q ; 0 ; B_v A_v]`` with ``scale = alpha / rank`` as a float, so ``merge``
is one call to ``remove_parametrizations`` and the adapter state is the parameters named ``lora_``.

The layer's forward, though, adds the low-rank path to the frozen product (``x W^T + scale * x A^T B^T`` on
the q and v columns) instead of multiplying by the summed weight: same outputs, but the backward pass then
never forms the full (3*dim x dim) weight gradient that only the small A and B would use.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from ..common.errors import ConfigError


class QVLoRA(nn.Module):
    """Low-rank updates of the q and v row blocks of a fused (3*dim x dim) qkv weight."""

    def __init__(self, dim: int, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        if rank <= 0:
            raise ConfigError(f"LoRA rank must be a positive integer, got {rank}")
        self.dim, self.rank, self.alpha = dim, rank, float(alpha)
        self.scale = float(alpha) / rank
        self.lora_A_q = nn.Parameter(torch.empty(rank, dim))
        self.lora_B_q = nn.Parameter(torch.zeros(dim, rank))
        self.lora_A_v = nn.Parameter(torch.empty(rank, dim))
        self.lora_B_v = nn.Parameter(torch.zeros(dim, rank))
        # Kaiming-uniform A and zero B: the adapted model starts identical to the backbone.
        nn.init.kaiming_uniform_(self.lora_A_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_A_v, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        d = self.dim
        delta_q = (self.lora_B_q @ self.lora_A_q) * self.scale
        delta_v = (self.lora_B_v @ self.lora_A_v) * self.scale
        return torch.cat([weight[:d] + delta_q, weight[d : 2 * d], weight[2 * d :] + delta_v])

    def add_updates(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`out` (= x W^T + b, 2-D: tokens x 3*dim) plus the q and v low-rank updates of `x`, in place."""
        zeros = self.lora_B_q.new_zeros(self.rank, self.dim)  # the k columns get no update
        up = (
            torch.cat(
                [torch.cat([self.lora_B_q.t(), zeros, zeros], 1), torch.cat([zeros, zeros, self.lora_B_v.t()], 1)]
            )
            * self.scale
        )  # (2r, 3*dim), contiguous
        low = x @ torch.cat([self.lora_A_q, self.lora_A_v]).t()  # (tokens, 2r)
        # In place on the frozen product, which its backward does not need: no copy of the tokens x 3*dim output.
        return out.addmm_(low.to(out.dtype), up.to(out.dtype))  # under autocast, out is bf16/fp16


def _lora_qkv_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Forward of a LoRA-parametrized qkv Linear: the frozen product plus the low-rank path (see module doc)."""
    weight = self.parametrizations.weight
    tokens = x.reshape(-1, x.shape[-1])  # 2-D, so that the in-place update acts on a tensor, not on a view
    out = weight[0].add_updates(F.linear(tokens, weight.original, self.bias), tokens)
    return out.view(*x.shape[:-1], out.shape[-1])


def qkv_layers(model: nn.Module) -> list[nn.Linear]:
    """The fused qkv Linear of every transformer block of a timm ViT."""
    return [block.attn.qkv for block in model.blocks]


def add_lora(model: nn.Module, rank: int = 4, alpha: float = 8.0) -> nn.Module:
    """Parametrize every block's qkv weight with a q/v LoRA update (in place); returns `model`."""
    for qkv in qkv_layers(model):
        if parametrize.is_parametrized(qkv, "weight"):
            raise ConfigError("the model already has LoRA on its qkv weights")
        lora = QVLoRA(qkv.in_features, rank, alpha).to(qkv.weight.device)
        parametrize.register_parametrization(qkv, "weight", lora)
        # register_parametrization gave this one layer a class of its own; remove_parametrizations (merge)
        # restores nn.Linear and with it the plain forward.
        type(qkv).forward = _lora_qkv_forward
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether any qkv weight of `model` carries a LoRA parametrization."""
    return any(parametrize.is_parametrized(qkv, "weight") for qkv in qkv_layers(model))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its qkv weight (in place): same outputs, plain Linear layers."""
    for qkv in qkv_layers(model):
        if parametrize.is_parametrized(qkv, "weight"):
            parametrize.remove_parametrizations(qkv, "weight", leave_parametrized=True)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA parameters of `model`, by their state-dict names."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}
