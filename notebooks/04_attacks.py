# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · What the key hides, and what it does not
#
# Notebooks 01-03 treat the block-wise key as what keeps the images private: the data owner shares only
# encrypted images, and the proposed method trains a model on them. This notebook takes the attacker's side.
# The attacker knows the scheme (block size, which options are on), never the key, and tries to recover it:
#
# 1. what the cipher gives away whatever the key (the block-mean thumbnail, block histograms), and the key
#    space in bits;
# 2. the **known-plaintext** attack: one plain/encrypted pair gives the whole key;
# 3. the **chosen-plaintext** attack: two probe images give any key, options included;
# 4. the **ciphertext-only** attack: encrypted images and unrelated public images are enough;
# 5. the security study: attack success against the number of ciphertexts, and what each cipher option costs
#    in accuracy;
# 6. does a shared adapter leak the key?
# 7. what this means for the paper's privacy claim.
#
# Every attack is a function of `encvit.attacks` and returns an ordinary `encvit.cipher.Key`; the cells only call
# the package. `ENCVIT_QUICK=1` (set by the test suite) leaves out the attack at M = 16 (30-120 s). Section 5
# shows the shipped security study, or runs a toy one when it is missing or when `ENCVIT_RERUN=1` is set.

# %%
import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice about a missing widget library

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

# encvit.experiments.security selects matplotlib's file-only backend (Agg): return to figures shown in the notebook
# %matplotlib inline
from matplotlib_inline.backend_inline import set_matplotlib_formats

from encvit.attacks import (
    best_pose_quality,
    block_histograms,
    block_mean_thumbnail,
    block_symmetries,
    chosen_plaintext,
    ciphertext_only,
    decryption_quality,
    key_agreement,
    key_from_adapter,
    key_from_weights,
    key_space_bits,
    known_plaintext,
    make_probes,
)
from encvit.attacks.blocks import to_blocks
from encvit.attacks.datasets import crop_to_blocks, fashion_attack_sets, public_photographs
from encvit.cipher import Key
from encvit.common.errors import AttackError
from encvit.common.shipped import DEMO_PASSPHRASE, SHIPPED_SECURITY
from encvit.demo import viz
from encvit.experiments.security import (
    SETTINGS,
    collect,
    collect_adapter_leaks,
    markdown,
    plot,
    security_study,
)
from encvit.models import adapt_to_key, create_backbone, shipped_comparison
from encvit.training import TrainConfig

set_matplotlib_formats("jpeg", pil_kwargs={"quality": 75})  # encrypted images are noise: JPEG keeps them ~5x smaller

QUICK = os.environ.get("ENCVIT_QUICK") == "1"
RERUN = os.environ.get("ENCVIT_RERUN") == "1"
PASSPHRASE = "notebook 04 passphrase"  # the data owner's secret in this notebook; the attacker never reads it
CIPHERTEXTS = 200  # encrypted Fashion-MNIST images the ciphertext-only attacker holds
REFERENCES = 1000  # public Fashion-MNIST images of other classes
TOY_SETTINGS = ("shuffle", "scramble", "per-image") if QUICK else tuple(SETTINGS)  # of a toy security study
viz.notebook_style()
torch.set_num_threads(1)  # every model here is small: one thread is fast and avoids contention on busy machines
print(f"quick mode: {QUICK}; rerun: {RERUN}")


def gallery(*args, **kwargs):
    """`viz.plot_images`, laid out again so that the figure's title clears the images' titles."""
    fig = viz.plot_images(*args, **kwargs)
    fig.set_layout_engine("constrained")
    return fig


# %% [markdown]
# The images: colour photographs that scikit-image and scikit-learn ship (cropped to multiples of 16), and
# Fashion-MNIST at 32 x 32 x 3 as the shipped backbone sees it. The data owner's Fashion-MNIST images are
# T-shirts, trousers, pullovers, dresses and coats from the fine-tuning data; the attacker's public images are
# sandals, shirts, sneakers, bags and ankle boots from the pretraining data: never an image of the owner's
# classes (`encvit.attacks.datasets`).

# %%
photos = public_photographs(16)
victims, labels, public = fashion_attack_sets(CIPHERTEXTS, REFERENCES)
print(", ".join(f"{name} {p.shape[1]}x{p.shape[0]}" for name, p in photos.items()))
print(
    f"Fashion-MNIST: {len(victims)} images of the owner's classes, {len(public)} public images of other classes, "
    f"each {victims.shape[1]}x{victims.shape[2]}x{victims.shape[3]}"
)

# %% [markdown]
# ## 1 · Leaks by construction, and the key space
#
# Pixel shuffling only moves values *inside* a block. Every block keeps its multiset of values, so its mean, its
# histogram and its contrast are public whatever the key. The mean of each block is the image at 1/M of its
# resolution: a thumbnail anyone can read off an encrypted image (`block_mean_thumbnail`).

# %%
owner_key = Key.generate(16, 3, passphrase=PASSPHRASE)
scrambling_key = Key.generate(16, 3, passphrase=PASSPHRASE, scramble=True)
astronaut = photos["astronaut"]
encrypted = owner_key.encrypt(astronaut)
thumbnail = np.rint(block_mean_thumbnail(encrypted, 16)).astype(np.uint8)
scrambled_thumbnail = np.rint(block_mean_thumbnail(scrambling_key.encrypt(astronaut), 16)).astype(np.uint8)
fig = gallery(
    [astronaut, encrypted, thumbnail, scrambled_thumbnail],
    [
        "plain (never shared)",
        "encrypted, M = 16 (shared)",
        f"its block means ({thumbnail.shape[1]}x{thumbnail.shape[0]})",
        "the same with block scrambling",
    ],
    "What every encrypted image shows, whatever the key",
    size=2.6,
)

# %% [markdown]
# *Figure 1. A photograph, its encryption at M = 16, the mean of each encrypted 16 x 16 x 3 block (one grey value
# per block, 32 x 32 blocks), and the same thumbnail when block scrambling also moves the blocks: the pieces of
# the thumbnail are shuffled, but every piece is still there, a jigsaw puzzle to solve (section 5 measures how far
# the ciphertext-only attack gets with it).*
#
# The per-block histograms do not change either: a plain image and its encryption have the same values in every
# block, only at other places.

# %%
# NBVAL_CHECK_OUTPUT
same = np.array_equal(block_histograms(astronaut[None], 16), block_histograms(encrypted[None], 16))
print(f"per-block histograms of plain and encrypted image identical: {same}")
owner_grey_key = Key.generate(4, 3, passphrase=PASSPHRASE)
grey_encrypted = owner_grey_key.encrypt(victims)
print(
    "block means identical, Fashion-MNIST at M = 4:",
    np.allclose(block_mean_thumbnail(victims, 4), block_mean_thumbnail(grey_encrypted, 4)),
)

# %% [markdown]
# A key is large. `key_space_bits` gives the size of each part in bits: (C·M·M)! pixel permutations, (number of
# blocks)! block orders, 2^(C·M·M) negative-positive masks. Below for the shipped backbone's setting (M = 4, 8 x 8
# blocks) and the paper's (ViT-B/16: M = 16, 14 x 14 blocks), next to what the attacks of this notebook need.

# %%
# NBVAL_CHECK_OUTPUT
space = (
    pd.DataFrame(
        {
            label: key_space_bits(m, 3, grid, scramble=True, neg_pos=True)
            for label, m, grid in (("M = 4, 32x32 (bits)", 4, (8, 8)), ("M = 16, 224x224 (bits)", 16, (14, 14)))
        }
    )
    .round(0)
    .astype(int)
)
space["what the attacks below need"] = {
    "pixel shuffling": "1 known plain/encrypted pair, or 2 chosen images, or ciphertexts alone (section 4)",
    "block scrambling": "the 2 chosen images also give it; ciphertexts alone: a jigsaw over all images",
    "negative-positive": "the 2 chosen images also give it; ciphertexts alone: the signs of correlations",
    "total": "not a brute-force search: each part is read off separately",
}
print(space.to_string())

# %% [markdown]
# Against brute force, 2^203 keys at M = 4 and 2^6259 at M = 16 are beyond reach. None of the attacks below
# search the key space: the same permutation acts on every block of every image, so each block is one more
# sample of it, and the permutation is read off.

# %% [markdown]
# ## 2 · Known plaintext: one pair gives the whole key
#
# The attacker holds one photograph and its encryption (say, a picture the owner also posted unencrypted).
# Each of the 1,024 blocks of a 512 x 512 photograph is a pair (plain block, encrypted block) under the same
# permutation: the values of encrypted position k over all blocks are the values of plain position
# `pixel_permutation[k]`. `known_plaintext` matches positions by these value vectors (an assignment on squared
# distances) and checks that the key decrypts the pair exactly. Without `block_size` it tries every block size that
# fits the image (a few seconds more).

# %%
# NBVAL_CHECK_OUTPUT
report = {}
recovered = known_plaintext([astronaut], [encrypted], block_size=16, report=report)
print("report:", report)
print("recovered key:", recovered.describe())
print("key agreement with the owner's key:", key_agreement(owner_key, recovered))
plain_blocks, encrypted_blocks = to_blocks(astronaut[None], 16)[0], to_blocks(encrypted[None], 16)[0]
print(
    "every encrypted position k holds plain position pixel_permutation[k] in all 1,024 blocks:",
    np.array_equal(encrypted_blocks, plain_blocks[:, recovered.pixel_permutation]),
)

# %% [markdown]
# The key decrypts *other* images encrypted with it: the owner encrypts every image with the same key.

# %%
# NBVAL_CHECK_OUTPUT
coffee = photos["coffee"]
coffee_encrypted = owner_key.encrypt(coffee)
coffee_decrypted = recovered.decrypt(coffee_encrypted)
print(
    f"another photograph ({coffee.shape[1]}x{coffee.shape[0]}) decrypted exactly: "
    f"{np.array_equal(coffee_decrypted, coffee)}"
)

# %%
fig = gallery(
    [astronaut, encrypted, coffee_encrypted, coffee_decrypted],
    ["known: plain", "known: encrypted", "another ciphertext", "decrypted with the recovered key"],
    "Known-plaintext attack at M = 16: one pair, the whole key",
    size=2.6,
)

# %% [markdown]
# *Figure 2. Left: the one pair the attacker knows. Right: another photograph encrypted with the same key, and the
# attacker's exact decryption of it.*
#
# **Ties.** Where positions hold the same values in every known block, no attack on these pairs can tell them apart.
# The clearest case is a grey image stored with three identical channels: the three channels of a pixel are always
# equal. The solver then picks one of the tied positions, which decrypts the known images exactly, and
# `report["tied_positions"]` counts how many positions had a twin.

# %%
# NBVAL_CHECK_OUTPUT
grey_report = {}
grey_recovered = known_plaintext(victims[:1], grey_encrypted[:1], block_size=4, report=grey_report)
print("report:", grey_report, f"(of {owner_grey_key.block_length} positions)")
print("key agreement:", key_agreement(owner_grey_key, grey_recovered))
print(
    f"all {len(victims)} grey images decrypted exactly:",
    np.array_equal(grey_recovered.decrypt(grey_encrypted), victims),
)
colour = crop_to_blocks(astronaut[::16, ::16], 4)  # a 32 x 32 colour image
print(
    "a colour image encrypted with the same key, decrypted exactly:",
    np.array_equal(grey_recovered.decrypt(owner_grey_key.encrypt(colour)), colour),
)
colour_recovered = known_plaintext(
    [victims[0], colour], [grey_encrypted[0], owner_grey_key.encrypt(colour)], block_size=4
)
print("with the colour pair added, key agreement:", key_agreement(owner_grey_key, colour_recovered))

# %% [markdown]
# A 32 x 32 x 3 grey image at M = 4 has 48 positions per block, 16 pixels with 3 equal channels each: 32 of the
# 48 positions have a twin. The recovered key puts every value in the right *pixel* (`positions_same_pixel` = 1)
# but orders the three channels of a pixel blindly (`positions_exact` near 1/3: a blind order of three gets one
# right on average). For grey images that is all the attacker needs: every one of them decrypts exactly. A colour
# image encrypted with the same key does not, until one colour pair joins the known ones; then the ties are gone
# and the key is exact.

# %% [markdown]
# ## 3 · Chosen plaintext: two probe images give any key
#
# If the attacker can have two images of his choice encrypted (an encryption service, a shared camera app),
# `make_probes` writes each block position's index in base 256 into probe A (block 0: index mod 256, block 1:
# index // 256) and a label for every block into probe B (each block one constant below 128). After encryption,
# probe A's first two blocks spell out the permutation; a constant c that comes back as 255 - c shows a
# negative-positive flip; and where the labelled blocks of B went gives the block order. Here the owner's key has
# all three parts: pixel shuffling, negative-positive and block scrambling.

# %%
full_key = Key.generate(16, 3, passphrase=PASSPHRASE, neg_pos=True, scramble=True)
size = (astronaut.shape[1], astronaut.shape[0])  # the block order depends on the grid: probes of the victims' size
probes = make_probes(16, 3, size=size)
encrypted_probes = [full_key.encrypt(p) for p in probes]
fig = gallery(
    probes + encrypted_probes,
    ["probe A", "probe B", "probe A encrypted", "probe B encrypted"],
    f"The two chosen images at M = 16 ({size[0]}x{size[1]}), before and after encryption",
    size=2.6,
)

# %% [markdown]
# *Figure 3. Probe A is dark except for its first two blocks (top left: the position indices); its other blocks
# hold 1 + (block number) // 128. Probe B gives block b the value b mod 128: a ramp that starts again every 128
# blocks (4 rows of 32 blocks). Encrypted, the flipped positions turn bright (255 - c), and block scrambling
# scatters the ramps.*

# %%
# NBVAL_CHECK_OUTPUT
probe_key = chosen_plaintext(encrypted_probes)
grid = (astronaut.shape[0] // 16, astronaut.shape[1] // 16)
print("recovered key:", probe_key.describe())
print("key agreement:", key_agreement(full_key, probe_key, grid))
print(
    "the photograph encrypted with the full key, decrypted exactly:",
    np.array_equal(probe_key.decrypt(full_key.encrypt(astronaut)), astronaut),
)

# %% [markdown]
# Both options are read off with the permutation, from the same two images: they add key space, not work.
# (The block order is recovered for the probes' grid, 32 x 32 blocks here: images of another size have another
# block order, and the attacker makes probes of each size he wants to decrypt.)

# %% [markdown]
# ## 4 · Ciphertext only: encrypted images and public images of another kind
#
# The hardest case for the attacker and the one that matters most: he only ever sees encrypted images. He knows
# what natural images look like, though. Neighbouring pixels are correlated, and the same permutation acts on
# every block, so the correlation matrix of the C·M·M *encrypted* positions, taken over all encrypted blocks, is a
# permuted copy of the correlation matrix of plain blocks, which any public images give. Matching the two
# (graph matching: `scipy.optimize.quadratic_assignment`) recovers the permutation up to what correlations cannot
# see: the block's rotations and reflections (8 in all; a turned block has the same statistics) and, in colour,
# the channel order. The smoothness of the decrypted images across block boundaries picks among them.
#
# First the shipped backbone's setting: 200 encrypted Fashion-MNIST images at M = 4, 1,000 public images of
# other classes as reference.

# %%
grey_attack_report = {}
cto_key = ciphertext_only(grey_encrypted, list(public), 4, report=grey_attack_report)
grey_decrypted = cto_key.decrypt(grey_encrypted)
print("key agreement:", {k: round(v, 3) for k, v in key_agreement(owner_grey_key, cto_key).items()})
print("decryptions:", {k: round(v, 3) for k, v in decryption_quality(victims, grey_decrypted).items()})


# %%
def plot_correlation_matching(report: dict, recovered: Key, title: str):
    """Reference correlations, encrypted correlations in encrypted order, and reordered by the recovered key."""
    encrypted_corr = report["encrypted_correlations"]
    order = np.argsort(recovered.pixel_permutation)  # order[i]: the encrypted position the key puts at plain i
    panels = [
        (report["reference_correlations"], "public images"),
        (encrypted_corr, "encrypted, as they come"),
        (encrypted_corr[np.ix_(order, order)], "encrypted, reordered by the key found"),
    ]
    lowest = min(matrix.min() for matrix, _ in panels)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.9), layout="constrained")
    for ax, (matrix, label) in zip(axes, panels, strict=False):
        shown = ax.imshow(matrix, cmap="viridis", vmin=lowest, vmax=1, interpolation="nearest")
        ax.set(title=label, xlabel="block position")
    axes[0].set_ylabel("block position")
    fig.colorbar(shown, ax=axes, shrink=0.8, label="correlation")
    fig.suptitle(title)
    return fig


fig = plot_correlation_matching(
    grey_attack_report,
    cto_key,
    f"Correlations of the 48 positions of a 4x4x3 block, over {len(victims):,} "
    f"encrypted and {len(public):,} public images",
)

# %% [markdown]
# *Figure 4. Left: how the 48 positions of a block correlate in public images (positions in (channel, row, column)
# order: the 3 x 3 pattern of 16 x 16 squares is the three identical grey channels; within each square, neighbours
# correlate most). Middle: the same for the encrypted positions in the order the ciphertexts give them; the
# structure is there, but scattered. Right: the middle matrix reordered by the permutation the attack found: the
# pattern of the left one again (not the same values: the owner's garments are not the public images).*

# %%
shown = list(range(6))
fig = gallery(
    [*victims[shown], *grey_encrypted[shown], *grey_decrypted[shown]],
    [""] * 18,
    f"Ciphertext-only attack at M = 4 from {len(victims)} encrypted images",
    ncols=6,
    row_labels=["plain", "encrypted", "attacker's"],
    size=1.4,
)

# %% [markdown]
# *Figure 5. Six of the owner's images, their encryptions (all the attacker has of them) and the attacker's
# decryptions.*
#
# **The symmetry step, in colour.** On a photograph the blocks are larger. At M = 8 (192 positions), on a
# 256 x 256 crop of the photograph attacked alone, with three other photographs as the reference:

# %%
photo_8 = astronaut[:256, :256]
references_8 = [crop_to_blocks(p, 8) for name, p in photos.items() if name != "astronaut"][:3]
key_8 = Key.generate(8, 3, passphrase=PASSPHRASE)
photo_8_encrypted = key_8.encrypt(photo_8)
report_8 = {}
cto_key_8 = ciphertext_only(photo_8_encrypted[None], references_8, 8, report=report_8)
print("key agreement:", {k: round(v, 3) for k, v in key_agreement(key_8, cto_key_8).items()})
print(
    "decryption:",
    {k: round(v, 3) for k, v in decryption_quality(photo_8[None], cto_key_8.decrypt(photo_8_encrypted)[None]).items()},
)
fig = plot_correlation_matching(
    report_8,
    cto_key_8,
    "Correlations of the 192 positions of an 8x8x3 block, one encrypted photograph against three public ones",
)

# %% [markdown]
# *Figure 6. As figure 4 for a colour photograph: three squares for the three channels, which now differ, so the
# matching also has to put each value in its channel. The reordered matrix has the reference's pattern; its values
# are the astronaut's, whose channels correlate more than the reference photographs' do.*
#
# Correlations leave 8 candidates: the matched permutation followed by each rotation or reflection of the block
# (`block_symmetries`). The attack decrypts with each and keeps the one whose blocks fit together best, i.e. the
# lowest mean step across block boundaries (`report["roughness"]`). Below the 8 candidates, rebuilt from the
# recovered key and the symmetries.

# %%
symmetries = block_symmetries(8, 3)
best = int(np.argmin(report_8["roughness"]))
matched = np.argsort(symmetries[best])[cto_key_8.pixel_permutation]  # the permutation before the symmetry step
candidates = [Key(8, 3, symmetry[matched]).decrypt(photo_8_encrypted)[:96, :96] for symmetry in symmetries]
titles = [f"{'chosen: ' if i == best else ''}roughness {r:.1f}" for i, r in enumerate(report_8["roughness"])]
fig = gallery(
    candidates, titles, "The 8 orientations of the block (top-left 96x96 of each decryption)", ncols=4, size=2.2
)

# %% [markdown]
# *Figure 7. The 8 candidate decryptions; the title gives each one's roughness across block boundaries (mean
# absolute step, in grey levels). Only the upright orientation joins the blocks into a smooth picture.*
#
# **The paper's setting, M = 16** (768 positions; 2 starts of the graph matching take 30-120 s on 2 cores, so
# quick mode leaves it out): the whole photograph, attacked alone, three other photographs as reference.

# %%
if QUICK:
    print("quick mode: the attack at M = 16 is left out (30-120 s); the stored outputs show it")
else:
    references_16 = [p for name, p in photos.items() if name != "astronaut"][:3]
    report_16 = {}
    cto_key_16 = ciphertext_only(encrypted[None], references_16, 16, report=report_16)
    decrypted_16 = cto_key_16.decrypt(encrypted)
    print("key agreement:", {k: round(v, 3) for k, v in key_agreement(owner_key, cto_key_16).items()})
    print("decryption:", {k: round(v, 3) for k, v in decryption_quality(astronaut[None], decrypted_16[None]).items()})
    print(
        "the ciphertext itself:",
        {k: round(v, 3) for k, v in decryption_quality(astronaut[None], encrypted[None]).items()},
    )
    fig = gallery(
        [astronaut, encrypted, decrypted_16],
        ["plain", "the one ciphertext", "attacker's decryption"],
        "Ciphertext-only attack at M = 16 from one encrypted photograph",
        size=2.8,
    )

# %% [markdown]
# *Figure 8 (full mode). At 16 x 16 x 3 one photograph gives only 1,024 blocks to estimate the correlations of 768
# positions: part of the key comes out exact (the share above) and the rest is wrong, yet the decryption is
# recognisable at once. Its PSNR stands next to the ciphertext's own, scored as if it were a decryption.*

# %% [markdown]
# ## 5 · The security study: how many ciphertexts, and what each option costs
#
# `encvit study security` repeats the ciphertext-only attack of section 4 (M = 4, Fashion-MNIST) for each cipher
# setting against 10-1,000 ciphertexts, and trains MeLo, the proposed method and full fine-tuning on images
# encrypted with each setting. "One key per image" is the reference point: a fresh key for every image, nothing
# shared to learn or to recover.
#
# The cell shows the **shipped study** (`encvit/results/security/`) when it is there; otherwise, and always with
# `ENCVIT_RERUN=1`, it runs a toy study (60 images, 1 epoch, MeLo only, 10 ciphertexts, 300 references; three of
# the five settings in quick mode) into a temporary folder. The printed line says which one is shown.

# %%
toy = RERUN or not (SHIPPED_SECURITY / "meta.json").exists()
if toy:
    study_dir = Path(tempfile.mkdtemp(prefix="encvit-04-security-"))
    with contextlib.redirect_stderr(io.StringIO()):  # the study's progress bars
        security_study(
            TrainConfig(limit=60, epochs=1, batch_size=32, progress=False),
            TOY_SETTINGS,
            ("melo",),
            (10,),
            seeds=1,
            draws=1,
            out=study_dir,
            references=300,
            log=lambda *_: None,
        )
else:
    study_dir = SHIPPED_SECURITY
study_accuracy, study_attacks = collect(study_dir)
study_meta = json.loads((study_dir / "meta.json").read_text())
print(
    f"shown: {'a toy study (not the shipped one) in ' + str(study_dir) if toy else 'the shipped study'}; "
    f"{len(study_attacks)} attacks, {len(study_accuracy)} training runs, {study_meta['epochs']} epoch(s), "
    f"ciphertexts {study_meta['counts']}, {study_meta['draws']} draw(s), {study_meta['seeds']} seed(s)"
)
display(Markdown(markdown(study_accuracy, study_attacks, study_meta, collect_adapter_leaks(study_dir))))

# %%
with tempfile.TemporaryDirectory() as scratch:
    plot(study_accuracy, study_attacks, Path(scratch) / "security.png")
    display(Image(filename=Path(scratch) / "security.png"))
if toy:
    shutil.rmtree(study_dir)

# %% [markdown]
# *Figure 9. Left: PSNR of the attacker's decryptions against the number of ciphertexts, per setting (100 dB = every
# image exact). Right: the trade-off, test accuracy of each method against the attack's PSNR at the largest number
# of ciphertexts.* A toy study (the printed line says when it is the one shown) is too small to read accuracy from.
#
# How to read the table: negative-positive flips show as negative correlations and cost the attack nothing.
# Block scrambling *seems* to stop the attack on small grey images: scored against the upright originals, next to
# none of the key and a PSNR of 7-9 dB. The "any pose" columns tell another story: with the block order unknown
# too, the attack solves the pixel permutation and a jigsaw over all images at once, and it gets all of it right
# except which way is up. The garments come back exact, turned and shifted round by whole blocks, the same way for
# every image; the figure below shows it. Images of other classes cannot tell the attack which pose is upright
# (shoes are wide, garments tall), a person can at a glance. Scrambling does nothing against the plaintext attacks
# of sections 2 and 3 either. One key per image leaves nothing shared, so the attack has nothing to learn; neither
# has the model, and the accuracy table shows what that costs.

# %%
scrambling_grey_key = Key.generate(4, 3, passphrase=PASSPHRASE, scramble=True)
scrambled_grey = scrambling_grey_key.encrypt(victims)
jigsawed = ciphertext_only(scrambled_grey, list(public), 4, scramble=True).decrypt(scrambled_grey)
upright, posed = decryption_quality(victims, jigsawed), best_pose_quality(victims, jigsawed, 4)
print(
    f"block scrambling, {len(victims)} ciphertexts: against the upright images {upright['images_exact']:.0%} "
    f"exact, PSNR {upright['psnr_db']:.1f} dB; in the pose {posed['pose']}: "
    f"{posed['images_exact_any_pose']:.0%} exact"
)
fig = gallery(
    [*victims[shown], *scrambled_grey[shown], *jigsawed[shown]],
    [""] * 18,
    f"Ciphertext-only attack with block scrambling, M = 4, {len(victims)} encrypted images",
    ncols=6,
    row_labels=["plain", "encrypted", "attacker's"],
    size=1.4,
)

# %% [markdown]
# *Figure 10. As figure 5 with a key that also scrambles the blocks: the attacker's decryptions are the owner's
# images, turned and shifted round (the printed pose), exactly.*

# %% [markdown]
# ## 6 · Does a shared adapter leak the key?
#
# The proposed method trains the patch embedding, and the backbone it started from is public. A model adapted
# *exactly* to the key has the patch embedding E' = E Pᵀ: its columns are the pretrained columns in the key's order
# (notebook 01), so matching columns reads the key off at once. A fine-tuned model only moves E some way from where
# it started, but the move carries the key too: the gradient of encrypted column k is driven by the plain pixel the
# key put there (`encvit.attacks.adapter_leak` explains the first-order reading). `key_from_adapter` reads a
# key off an adapter file; the shipped encrypted runs (`encvit/results/fashion5k`) were trained with the demo
# passphrase's key.

# %%
backbone = create_backbone("encvit-tiny")
demo_key = Key.generate(4, 3, passphrase=DEMO_PASSPHRASE)
demo_encrypted = demo_key.encrypt(victims)
exact_model = adapt_to_key(backbone, demo_key)
readings = {
    "exactly adapted (adapt_to_key)": key_from_weights(
        exact_model.patch_embed.proj.weight.detach().numpy(), backbone.patch_embed.proj.weight.detach().numpy(), 4, 3
    )
}
shipped = shipped_comparison()  # encvit/results/fashion5k
for run in ("proposed-encrypted", "full-encrypted"):
    readings[f"shipped {run}"] = key_from_adapter(shipped / run, backbone, reference=public)
rows = {}
for source, reading in readings.items():
    agreement = key_agreement(demo_key, reading)
    quality = decryption_quality(victims, reading.decrypt(demo_encrypted))
    rows[source] = {
        "key exact": agreement["positions_exact"],
        "key, same pixel": agreement["positions_same_pixel"],
        f"of {len(victims)} images decrypted exactly": quality["images_exact"],
        "PSNR (dB)": quality["psnr_db"],
    }
display(pd.DataFrame(rows).T.round(3))
try:
    key_from_adapter(shipped / "melo-encrypted", backbone)
except AttackError as error:
    print(f"shipped melo-encrypted: {str(error).replace(str(shipped) + os.sep, '')}")

# %% [markdown]
# "Key exact": share of the 48 positions recovered; "same pixel": share put in the right pixel, all that matters
# for grey images (their channels are equal); then the owner's 200 grey images decrypted with the key read off
# each model (public images of other classes serve as the reference for the block statistics). The exactly
# adapted model gives all of the key. The **shipped proposed adapter** gives every pixel, so every grey image the
# owner encrypted with that key decrypts exactly: sharing it is sharing the key. From the shipped full fine-tuning
# run this reading gets about chance (1/16 of the pixels): a limit of this first-order reading, not a proof that
# full fine-tuning hides the key. MeLo keeps the patch embedding frozen: its adapter holds nothing to read, which
# is also why it cannot adapt to the key exactly (notebook 02).

# %% [markdown]
# ## 7 · What this means for the paper's privacy claim
#
# The paper presents block-wise pixel shuffling with a secret key as what keeps the images private while a model
# is fine-tuned on them. Measured here, that protection is weak:
#
# - **Leaks by construction.** Every encrypted image shows its block-mean thumbnail and block histograms; at
#   M = 16 on 224 x 224 images that is a 14 x 14 picture of the image, whatever the key.
# - **Very few plaintexts break it.** One known plain/encrypted pair gives the whole key at M = 16; two chosen
#   images give any key with its negative-positive and block-scrambling parts. The key space (2^6259 at M = 16)
#   is no defence: the same key on every block and every image means no search is needed.
# - **Ciphertexts alone break it on small grey images** (every one of 200 Fashion-MNIST images decrypted exactly at
#   M = 4, in seconds), and at the paper's M = 16 one photograph gives a recognisable reconstruction.
# - **The options help little, at a price.** Negative-positive costs the attacks nothing. Block scrambling leaves
#   the ciphertext-only attack on small grey images everything but the images' orientation (section 5), stops no
#   plaintext attack, and with it a model must also learn the block order, which the proposed method (position
#   embedding frozen) cannot undo exactly (section 5's accuracy table gives the price). A shared proposed-method
#   adapter gives the key away (section 6).
#
# What the scheme does protect, at best: the fine detail of an image (at M = 16 a 224 x 224 image shows only its
# 14 x 14 thumbnail at a glance) against someone who holds no plaintext of the owner and few ciphertexts. What it
# does not: the images of an owner whose attacker holds one known image, can have two images encrypted, collects
# enough small ciphertexts, or receives the trained adapter.
#
# **A user who needs confidentiality** should use something whose security does not rest on a shared permutation:
#
# - encryption that rests on a standard hardness assumption, such as the CKKS path of notebook 03 (BlindTuner: the
#   server trains a head on homomorphically encrypted features and never sees the images or the features), at the
#   price of training only a head, far more slowly;
# - one key per image (section 5's reference point): nothing shared to recover, but also nothing for a model to
#   adapt to (section 5's accuracy table gives the price), and each block's mean still shows;
# - or keeping the images in the owner's hands (train locally, share nothing but the model, and treat the model
#   as sensitive).
#
# Block-wise encryption remains useful for what the paper shows about *learning*: a model can be fine-tuned to an
# input transformation cheaply, by training the patch embedding. As privacy, it is obfuscation.
