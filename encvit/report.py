"""Tables of what each method trains, in the units the paper uses."""
from __future__ import annotations

from .backbones import create_skeleton
from .methods import count_all_methods

PAPER_UNIT = 2 ** 20  # the paper's "M": 86,567,656 / 2^20 = 82.56
PAPER_COUNTS_M = {"full": 82.56, "melo": 0.15, "proposed": 0.71}  # ViT-B/16, as printed in the paper


def parameter_table(backbone: str, num_classes: int = 10, rank: int = 4, alpha: float = 8.0) -> dict[str, dict]:
    """Per method: trainable parameters exact, in 10^6, in 2^20 and as % of full fine-tuning."""
    counts = count_all_methods(lambda: create_skeleton(backbone), num_classes, rank, alpha)
    return {method: {"trainable": n, "millions": n / 1e6, "paper_m": n / PAPER_UNIT,
                     "percent_of_full": 100.0 * n / counts["full"]} for method, n in counts.items()}
