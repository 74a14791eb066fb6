"""What the package ships, found in one place: every package-data path (weights, samples, shipped results and runs)
and the sample images (for the demo, notebooks and tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # encvit/
WEIGHTS_DIR = PACKAGE_DIR / "weights"  # the shipped backbones and their model cards
SAMPLES_DIR = PACKAGE_DIR / "samples"
SHIPPED_RESULTS = PACKAGE_DIR / "results"  # the shipped comparisons and studies, one folder each
SHIPPED_STUDY = SHIPPED_RESULTS / "study"  # the full data-size study, measured on the shipped backbone
SHIPPED_SECURITY = SHIPPED_RESULTS / "security"
SHIPPED_FHE_RUNS = PACKAGE_DIR / "fhe" / "runs"  # the shipped encrypted-head runs
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
    return [
        Sample(SAMPLES_DIR / name, info["dataset"], info["label"])
        for name, info in labels.items()
        if dataset is None or info["dataset"] == dataset
    ]
