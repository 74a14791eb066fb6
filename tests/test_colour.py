"""Colour versions of the offline data: fixed, documented tints that carry no label information."""

import numpy as np
import pytest
import torch

from encvit.data.colour import MIN_CONTRAST, RandomTint, colourise, draw_tints, split_tints, tint
from encvit.data.datasets import load_dataset
from encvit.data.names import COLOUR_DATASETS


@pytest.fixture(scope="module")
def pair():
    return load_dataset("fashion5k"), load_dataset("cfashion5k")


def test_a_colour_dataset_is_its_grey_namesake_with_a_fixed_tint_per_image(pair):
    grey, colour = pair
    assert COLOUR_DATASETS["cfashion5k"] == "fashion5k" and colour.name == "cfashion5k"
    for part in ("train", "val", "test"):
        g, c = getattr(grey, part), getattr(colour, part)
        assert torch.equal(g.labels, c.labels) and c.images.shape == (len(g), 3, 28, 28) and c.classes == g.classes
        fg, bg = split_tints("cfashion5k", part, len(g))
        assert torch.equal(c.images, tint(g.images, torch.from_numpy(fg), torch.from_numpy(bg)))
    # the background of a Fashion-MNIST image (where its corner is 0, nearly always) is the drawn background colour
    _, bg = split_tints("cfashion5k", "train", len(colour.train))
    blank = grey.train.images[:, 0, 0, 0] == 0
    assert blank.float().mean() > 0.95
    assert np.array_equal(colour.train.images[blank][:, :, 0, 0].numpy(), bg[blank.numpy()])
    assert torch.equal(load_dataset("cfashion5k").train.images, colour.train.images)  # the same every time


def test_colour_carries_no_label_information(pair):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    _, colour = pair
    labels = colour.train.labels.numpy()
    fg, bg = split_tints("cfashion5k", "train", len(labels))
    colours = np.concatenate([fg, bg], axis=1) / 255.0
    # a classifier that sees only the two colours of each image is at chance (10 classes: 10%)
    scores = cross_val_score(LogisticRegression(max_iter=2000), colours, labels, cv=5)
    assert abs(scores.mean() - 0.10) < 0.02, scores
    # and no class's mean colour stands out: every class mean lies within 4 standard errors of the overall mean
    for c in range(10):
        members = colours[labels == c]
        se = colours.std(0) / np.sqrt(len(members))
        assert np.all(np.abs(members.mean(0) - colours.mean(0)) < 4 * se), c
    # by construction: the draws depend on the dataset, the split and the count only, never on labels
    assert np.array_equal(split_tints("cfashion5k", "train", len(labels))[0], fg)
    assert not np.array_equal(split_tints("cfashion5k", "val", len(labels))[0], fg)


def test_tints_keep_the_shape_visible():
    fg, bg = draw_tints(5000, np.random.default_rng(1))
    assert np.linalg.norm(fg.astype(float) - bg, axis=1).min() >= MIN_CONTRAST
    assert fg.dtype == np.uint8 and fg.std() > 60  # spread over the whole colour cube


def test_colourise_refuses_colour_input():
    with pytest.raises(ValueError, match="grey"):
        colourise(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "cfashion5k", "train")


def test_random_tint_colours_each_batch_afresh_and_keeps_a_grey_share():
    grey = load_dataset("fashion5k", limit=200).train.images
    augment = RandomTint(size=28, keep_grey=0.2, photo=0.3, crops=64, seed=0)
    first, second = augment(grey), augment(grey)
    assert first.shape == (len(grey), 3, 28, 28) and first.dtype == torch.uint8
    assert not torch.equal(first, second)  # fresh colours every batch
    kept_grey = (first[:, 0] == first[:, 1]).all((1, 2)) & (first[:, 1] == first[:, 2]).all((1, 2))
    assert 0.1 < kept_grey.float().mean() < 0.3
    again = RandomTint(size=28, keep_grey=0.2, photo=0.3, crops=64, seed=0)
    assert torch.equal(again(grey), first)  # seeded


def test_the_colour_backbone_note_names_the_colour_datasets_and_how_to_get_the_weights(tmp_path, monkeypatch):
    import encvit.training.run
    from encvit.data.names import is_colour_dataset
    from encvit.training.run import colour_backbone_note

    assert [is_colour_dataset(n) for n in ("cfashion5k", "cmnist5k", "cfashion55k")] == [True] * 3
    assert not any(is_colour_dataset(n) for n in ("fashion5k", "mnist5k", "cifar10", "folder:cfashion5k"))
    assert colour_backbone_note("fashion5k", "encvit-tiny") is None
    assert colour_backbone_note("cfashion5k", "encvit-tiny-colour") is None
    assert colour_backbone_note("cfashion5k", "vit_base_patch16_224") is None
    assert colour_backbone_note("cfashion5k", "encvit-tiny", pretrained=False) is None
    assert colour_backbone_note("cfashion5k", "encvit-tiny", weights="mine.safetensors") is None
    weights = tmp_path / "encvit-tiny-colour.safetensors"
    monkeypatch.setattr(encvit.training.run, "embedded_weights_path", lambda name: tmp_path / f"{name}.safetensors")
    before = colour_backbone_note(["fashion5k", "cmnist5k"], "encvit-tiny")
    assert before.startswith("note: cmnist5k is a colour dataset and encvit-tiny was pretrained on grey images")
    assert before.endswith(
        "(its weights are not shipped yet: make them with `encvit pretrain --name encvit-tiny-colour`)"
    )
    weights.write_bytes(b"")
    assert colour_backbone_note("cmnist5k", "encvit-tiny").endswith(
        "--backbone encvit-tiny-colour was pretrained on colour ones"
    )


def test_colour_datasets_are_named_wherever_a_user_picks_a_dataset(pair):
    from encvit.cli import build_parser
    from encvit.fhe.features import NAMED_CLASSES, class_count

    _, colour = pair
    assert NAMED_CLASSES["cfashion5k"] == colour.classes and class_count("cmnist5k") == 10
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("train", "compare", "study", "fhe-train", "features"):
        help_text = " ".join(commands[command].format_help().split())
        assert "cfashion5k, cmnist5k" in help_text, command
