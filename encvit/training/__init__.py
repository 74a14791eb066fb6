"""One training run (its config, loop and run folder) and the pretraining of the shipped backbones.

`from encvit.training import TrainConfig, train`; names load on first use.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "run": ["EvaluateConfig", "TrainConfig", "evaluate_run", "train"],
        "loop": ["LoopSettings", "evaluate", "fit"],
        # `pretrain` itself stays in encvit.training.pretrain: a function named like its module would hide the module
        "pretrain": ["PretrainConfig"],
    },
)
