"""The sample images shipped with the package (for the demo, notebooks and tests)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent / "samples"
DEMO_PASSPHRASE = "encvit-demo"  # the documented passphrase of the shipped encrypted adapters


@dataclass(frozen=True)
class Sample:
    """A shipped image with its dataset and true label (None for photographs)."""

    path: Path
    dataset: str
    label: str | None


def list_samples(dataset: str | None = None) -> list[Sample]:
    """Shipped samples, optionally only those of one dataset (e.g. 'fashion5k')."""
    labels = json.loads((SAMPLES_DIR / "labels.json").read_text())
    return [Sample(SAMPLES_DIR / name, info["dataset"], info["label"]) for name, info in labels.items()
            if dataset is None or info["dataset"] == dataset]
