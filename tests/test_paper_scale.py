"""The paper-scale recipe of docs/paper-scale.md runs, on a tiny configuration, through the exact same command path."""

import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from encvit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def readme_recipes() -> list[list[str]]:
    """The `encvit compare` commands of the paper-scale block in docs/paper-scale.md, as argument lists."""
    block = re.search(r"<!-- paper-scale -->\s*```bash\n(.*?)```", (ROOT / "docs" / "paper-scale.md").read_text(), re.S)
    assert block, "docs/paper-scale.md lacks the paper-scale recipe block"
    text = block.group(1).replace("\\\n", " ")
    commands = [shlex.split(line) for line in text.splitlines() if line.strip().startswith(("encvit", "torchrun"))]
    return [c[c.index("compare") :] for c in commands if "compare" in c]


def synthetic_folder(root: Path, per_class: int = 10) -> Path:  # enough for one validation image per class
    rng = np.random.default_rng(0)
    for c in ("airplane", "ship"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_readme_recipe_parses_with_the_papers_hyperparameters():
    recipes = readme_recipes()
    assert len(recipes) >= 2
    for argv in recipes:
        args = build_parser().parse_args(argv)
        assert args.backbone == "vit_base_patch16_224" and args.dataset == "cifar10" and args.image_size == 224
        assert (args.epochs, args.batch_size, args.warmup_epochs, args.weight_decay) == (100, 128, 20, 0.01)
        assert (args.rank, args.alpha) == (4, 8)
    assert {build_parser().parse_args(a).lr for a in recipes} == {1e-5, 1e-4}


def test_readme_recipe_runs_tiny(tmp_path):
    data = synthetic_folder(tmp_path / "synthetic")
    argv = readme_recipes()[0]
    overrides = {
        "--dataset": f"folder:{data}",
        "--epochs": "1",
        "--batch-size": "4",
        "--warmup-epochs": "0",
        "--out": str(tmp_path / "out"),
    }
    for flag, value in overrides.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main([*argv, "--no-pretrained", "--limit", "4"]) == 0
    results = (tmp_path / "out" / "results.md").read_text()
    for method in ("full", "melo", "proposed"):
        assert f"| {method} |" in results
    assert (tmp_path / "out" / "proposed-encrypted" / "adapter.safetensors").exists()
