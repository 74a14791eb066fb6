"""Data sets by name, in memory as uint8 tensors, and their colour versions.

`from encvit.data import load_dataset, load_cifar10`; names load on first use.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "names": [
            "CIFAR10_CLASSES",
            "COLOUR_DATASETS",
            "DATASETS",
            "DATASET_HELP",
            "DIGIT_CLASSES",
            "FASHION_CLASSES",
            "is_colour_dataset",
        ],
        "datasets": ["ImageSet", "Splits", "load_cifar10", "load_dataset", "load_folder", "stratified_subset"],
        "colour": ["RandomTint", "colourise"],
    },
)
