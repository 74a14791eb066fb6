"""The notebook figures of encvit.demo.viz: block views match the cipher, token similarity, every figure titled."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from encvit.cipher.key import Key
from encvit.demo import viz
from encvit.models.adapt import adapt_to_key
from encvit.models.backbones import create_backbone
from encvit.models.preprocess import BatchPreprocess


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)


def titled(fig) -> bool:
    return bool(fig._suptitle is not None and fig._suptitle.get_text())


def test_image_blocks_follow_the_cipher_convention(image):
    key = Key.generate(4, passphrase="viz")
    plain, encrypted = viz.image_blocks(image, 4), viz.image_blocks(key.encrypt(image), 4)
    assert plain.shape == (4 * 6, 48)
    assert np.array_equal(encrypted, plain[:, key.pixel_permutation])  # x' = P x in every block
    assert np.array_equal(np.sort(encrypted, axis=1), np.sort(plain, axis=1))  # what the histogram shows
    assert np.array_equal(viz.block_image(plain[7], 3, 4), image[4:8, 4:8])  # block 7 = row 1, column 1


def test_image_blocks_refuses_a_partial_block(image):
    with pytest.raises(ValueError, match="multiple of the block size 5"):
        viz.image_blocks(image, 5)


def test_uniform_blocks_marks_blocks_of_one_value():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    images[1, 0, 5, 6] = 9  # one pixel of image 1's last block
    mask = viz.uniform_blocks(images, 4)
    assert mask.shape == (2, 4)
    assert mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert viz.uniform_blocks(images.float() / 255, 4).equal(mask)


def test_token_similarity_is_one_for_the_adapted_embedding():
    torch.manual_seed(0)
    model = create_backbone("encvit-tiny", pretrained=False).eval()
    key = Key.generate(4, passphrase="viz")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    plain, encrypted = BatchPreprocess(32, 3)(images), BatchPreprocess(32, 3, key)(images)
    frozen = viz.patch_token_similarity(model, plain, encrypted)
    adapted = viz.patch_token_similarity(model, plain, encrypted, other=adapt_to_key(model, key))
    assert frozen.shape == adapted.shape == (3, 64)
    assert torch.allclose(adapted, torch.ones_like(adapted), atol=1e-5)
    assert frozen.mean() < 0.9


def test_every_figure_has_a_title_and_labelled_axes(image, tmp_path):
    key = Key.generate(4, passphrase="viz")
    encrypted = key.encrypt(image)
    similarity = torch.rand(2, 4)
    figures = [
        viz.plot_block_grid([image, encrypted], ["plain", "encrypted"], 4, "grid", highlight=[0, 5]),
        viz.plot_images(
            [image, encrypted, image[:, :, 0]], ["a", "b", "grey"], "gallery", ncols=2, row_labels=["one", "two"]
        ),
        viz.plot_permutation(key),
        viz.plot_blocks_side_by_side(image, encrypted, 4, [0, 3], "blocks"),
        viz.plot_block_histogram(image, encrypted, 4, 2),
        viz.plot_token_similarity(
            {"frozen": similarity, "adapted": similarity}, (2, 2), "tokens", include=similarity > 0.5
        ),
    ]
    for run, acc in (("full-plain", [20.0, 30.0]), ("full-encrypted", [15.0, 25.0])):
        (tmp_path / run).mkdir()
        pd.DataFrame({"epoch": [1, 2], "val_acc": acc}).to_csv(tmp_path / run / "metrics.csv", index=False)
    runs = pd.DataFrame(
        {"run": ["full-plain", "full-encrypted"], "method": "full", "setting": ["plain", "encrypted"], "seed": 0}
    )
    figures.append(viz.plot_training_curves(tmp_path, runs, "curves"))
    for fig in figures:
        assert titled(fig)
    # Axes that plot quantities say what they are.
    for fig in (figures[2], figures[4], figures[5], figures[6]):
        plotted = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert any(ax.get_xlabel() for ax in plotted) and any(ax.get_ylabel() for ax in plotted)


def test_notebook_style_sets_a_modest_dpi():
    viz.notebook_style(dpi=66)
    assert plt.rcParams["figure.dpi"] == 66 and plt.rcParams["savefig.dpi"] == 66
    viz.notebook_style()
