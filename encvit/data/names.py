"""Data sets by name and their classes: what the command line offers, importable without torch."""

from __future__ import annotations

from ..common.errors import Allowed

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGIT_CLASSES = [str(d) for d in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

DATASETS = ("fashion5k", "mnist5k", "cfashion5k", "cmnist5k", "cifar10", "fashion55k", "cfashion55k", "folder:PATH")
COLOUR_DATASETS = {"cfashion5k": "fashion5k", "cmnist5k": "mnist5k", "cfashion55k": "fashion55k"}
DATASET_HELP = "fashion5k, mnist5k, cfashion5k, cmnist5k (their colour versions), cifar10 or folder:PATH"


def is_colour_dataset(name: str) -> bool:
    """Whether `name` is one of the named colour datasets (a folder's colours are not known without reading it)."""
    return name in COLOUR_DATASETS


def dataset_name() -> Allowed:
    """A dataset name that `load_dataset` knows, or folder:PATH."""
    names = [n for n in DATASETS if not n.startswith("folder:")]
    return Allowed(
        f"one of {', '.join(names)} or folder:PATH",
        lambda v: v in names or (isinstance(v, str) and v.startswith("folder:") and v[7:].strip() != ""),
    )
