# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Block-wise encryption, step by step
#
# A data owner wants a model trained on her images without showing the images. In the paper this kit
# reproduces (Lin, Imaizumi, Kiya 2025), she **encrypts every image block by block with a secret key** and
# hands over only encrypted images. This notebook takes the cipher apart on real images:
#
# 1. the image is cut into M x M blocks, M = the Vision Transformer's patch size;
# 2. **one** secret permutation of the C·M·M values of a block is applied to **every** block;
# 3. the values of a block are kept, they only change places (also across colour channels);
# 4. two optional steps: block scrambling and negative-positive transformation;
# 5. decryption is exact, and a wrong key gives noise;
# 6. why a ViT whose patch embedding stays frozen sees a different input, and why E' = E Pᵀ undoes the
#    encryption exactly.
#
# Everything is done by the package (`encvit.cipher.Key`, `encvit.adapt`, `encvit.viz`); the cells only call it.
# Sizes come from the environment: `ENCVIT_QUICK=1` (set by the test suite) makes the run smaller.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice about a missing widget library

import numpy as np
import pandas as pd
import skimage.data
import torch
from IPython.display import display
from PIL import Image

from encvit import viz
from encvit.adapt import adapt_to_key
from encvit.backbones import create_backbone, describe
from encvit.cipher import Key
from encvit.data import load_dataset
from encvit.errors import KeyMismatchError
from encvit.images import load_image, to_array
from encvit.preprocess import BatchPreprocess
from encvit.samples import list_samples

QUICK = os.environ.get("ENCVIT_QUICK") == "1"
N_TOKEN_IMAGES = 64 if QUICK else 512  # Fashion-MNIST test images for the token-similarity statistics
PASSPHRASE = "notebook 01 passphrase"
viz.notebook_style()
torch.manual_seed(0)
torch.set_num_threads(1)  # every computation here is small: one thread is fast and avoids contention on busy machines
print(f"quick mode: {QUICK}; {N_TOKEN_IMAGES} images for the token statistics")

# %% [markdown]
# ## 1 · The images
#
# Two colour photographs that scikit-image ships (`skimage.data.chelsea()` and `coffee()`), resized to
# 336 x 224 pixels (width x height) so that both sides are multiples of 16, the patch size of ViT-B/16.
# For the shipped backbone `encvit-tiny` (32 x 32 inputs, 4 x 4 patches) we use the clothes and digits
# that the package ships (`encvit.samples.list_samples()`), at 32 x 32.

# %%
photos = {name: to_array(Image.fromarray(getattr(skimage.data, name)()), resize=(336, 224))
          for name in ("chelsea", "coffee")}
clothes = {s.label: load_image(s.path, channels=3, resize=(32, 32)) for s in list_samples("fashion5k")}
digits = {s.label: load_image(s.path, channels=3, resize=(32, 32)) for s in list_samples("mnist5k")}
for name, image in photos.items():
    print(f"{name}: {image.shape[1]} x {image.shape[0]} pixels, {image.shape[2]} channels, {image.dtype}")
print(f"shipped samples at 32 x 32: {len(clothes)} clothes ({', '.join(clothes)}), {len(digits)} digits")

# %% [markdown]
# ## 2 · Split into blocks
#
# A key is made from a passphrase (scrypt: the same passphrase and options always give the same key) or from
# the operating system's randomness. Its block size M must be the ViT's patch size, so that one block is
# exactly one patch token.

# %%
key = Key.generate(block_size=16, passphrase=PASSPHRASE)
print(key.describe())
cat, coffee = photos["chelsea"], photos["coffee"]
grid_h, grid_w = cat.shape[0] // key.block_size, cat.shape[1] // key.block_size
chosen = [2 * grid_w + 8, 5 * grid_w + 12, 9 * grid_w + 5, 11 * grid_w + 15]  # blocks we follow below
fig = viz.plot_block_grid([cat], ["chelsea"], key.block_size,
                          f"Cut into {key.block_size} x {key.block_size} blocks: "
                          f"{grid_h} x {grid_w} = {grid_h * grid_w} blocks", highlight=chosen, size=4.6)

# %% [markdown]
# *Figure 1. The photograph with the block grid drawn over it. Each cell is one 16 x 16 block, i.e. what becomes
# one patch token in ViT-B/16. The coloured outlines mark the four blocks followed in figures 3 and 4.*

# %% [markdown]
# ## 3 · One permutation of the C·M·M values, applied to every block
#
# A block is flattened in (C, H, W) order into C·M·M values (3·16·16 = 768 here). The key holds one permutation
# of these positions, `key.pixel_permutation`: encrypted value k is the plain value `pixel_permutation[k]`
# (x' = P x). The permutation of a 16 x 16 key has 768 entries; to see one whole, here is a key for 4 x 4
# blocks (48 values, the block size of `encvit-tiny`).

# %%
tiny_key = Key.generate(block_size=4, passphrase=PASSPHRASE)
print(tiny_key.describe())
print("pixel_permutation =", tiny_key.pixel_permutation.tolist())
fig = viz.plot_permutation(tiny_key)

# %% [markdown]
# *Figure 2. Left: the permutation matrix P of a 4 x 4 x 3 key (one black square per row: which plain position
# the encrypted position takes its value from). Right: the encrypted block laid out as its three colour
# channels; each cell shows the plain position its value comes from, coloured by the plain channel. Most
# values change channel, which is why an encrypted photograph looks colourful noise inside each block.*
#
# The same permutation acts on every block. We check it directly on the 16 x 16 key: cut the plain and the
# encrypted image into blocks (`viz.image_blocks`) and compare every encrypted block with the plain block
# rearranged by `key.pixel_permutation`.

# %%
encrypted_cat = key.encrypt(cat)
plain_blocks = viz.image_blocks(cat, key.block_size)
encrypted_blocks = viz.image_blocks(encrypted_cat, key.block_size)
print("blocks x values per block:", plain_blocks.shape)
print("every encrypted block == plain block[pixel_permutation]:",
      np.array_equal(encrypted_blocks, plain_blocks[:, key.pixel_permutation]))

# %% [markdown]
# ## 4 · Blocks before and after

# %%
fig = viz.plot_block_grid([cat, encrypted_cat], ["plain", f"encrypted with key {key.fingerprint}"],
                          key.block_size, "The whole image: plain vs encrypted (pixel shuffling only)",
                          highlight=chosen)

# %% [markdown]
# *Figure 3. The photograph and its encryption. The coarse picture survives: every block keeps its own values,
# so its mean brightness stays, but inside a block the pixels are scrambled and their colours mixed.*

# %%
fig = viz.plot_blocks_side_by_side(cat, encrypted_cat, key.block_size, chosen,
                                   "Four blocks enlarged: plain (top) and encrypted (bottom)")

# %% [markdown]
# *Figure 4. The four outlined blocks of figure 3, enlarged, before (top) and after (bottom) encryption. The
# same permutation was applied to each; the texture and edges within a block are gone.*

# %% [markdown]
# ## 5 · The values of a block are kept
#
# Pixel shuffling only moves values, so each block holds the same multiset of values after encryption. One
# channel alone does not: values move between red, green and blue.

# %%
fig = viz.plot_block_histogram(cat, encrypted_cat, key.block_size, chosen[0], channel=0,
                               suptitle=f"Block {chosen[0]}: the same values, in other places and channels")
same_values = np.array_equal(np.sort(plain_blocks, axis=1), np.sort(encrypted_blocks, axis=1))
print(f"all {len(plain_blocks)} blocks keep their values: {same_values}")

# %% [markdown]
# *Figure 5. Histogram of one block's values, plain (filled) and encrypted (outline). Left: all 768 values, the
# two histograms coincide. Right: the red channel only, which differs, since values move across channels.*

# %% [markdown]
# ## 6 · Options: block scrambling and negative-positive transformation
#
# Two further steps from the same line of work are off by default (the paper's setting is pixel shuffling):
# **block scrambling** moves whole blocks to other places (a secret permutation of the block positions), and
# the **negative-positive transformation** replaces x by 255 - x at key-chosen positions of each block.
# Each option enters the key derivation, so each key below has its own pixel permutation too.

# %%
keys = {
    "pixel shuffling": key,
    "+ block scrambling": Key.generate(16, passphrase=PASSPHRASE, scramble=True),
    "+ negative-positive": Key.generate(16, passphrase=PASSPHRASE, neg_pos=True),
    "+ both": Key.generate(16, passphrase=PASSPHRASE, scramble=True, neg_pos=True),
}
for name, k in keys.items():
    print(f"{name:22s} {k.describe()}")
gallery = [image for photo in photos.values() for image in [photo] + [k.encrypt(photo) for k in keys.values()]]
titles = [title for _ in photos for title in ["plain", *keys]]
fig = viz.plot_images(gallery, titles, "Encryption options on the two photographs", ncols=len(keys) + 1,
                      row_labels=list(photos), size=1.9)

# %% [markdown]
# *Figure 6. Each row: the plain photograph, then its encryption with pixel shuffling alone, with block
# scrambling, with negative-positive transformation, and with both. Block scrambling removes the coarse
# picture that pixel shuffling leaves; negative-positive inverts about half the values of each block.*

# %% [markdown]
# ## 7 · Decryption is exact
#
# `key.decrypt` applies the inverse permutation (and undoes the flips). We check it for every key, on the
# photographs, and with the 4 x 4 key on the shipped samples as one torch batch, as the training pipeline uses it.

# %%
checks = []
for name, k in keys.items():
    for photo_name, photo in photos.items():
        checks.append({"image": photo_name, "key": name, "exact": bool((k.decrypt(k.encrypt(photo)) == photo).all())})
batch = torch.from_numpy(np.stack([*clothes.values(), *digits.values()])).permute(0, 3, 1, 2)  # N x C x H x W
checks.append({"image": f"{len(batch)} samples (torch batch)", "key": "4 x 4 pixel shuffling",
               "exact": bool(torch.equal(tiny_key.decrypt(tiny_key.encrypt(batch)), batch))})
checks = pd.DataFrame(checks)
assert checks.exact.all(), "decryption must be exact"
checks

# %% [markdown]
# ## 8 · What a wrong key gives
#
# Someone without the key can only guess. Decrypting with a key made from another passphrase applies the wrong
# inverse permutation: the result is as scrambled as the encrypted image.

# %%
wrong_key = Key.generate(16, passphrase="a wrong guess")
encrypted_coffee = key.encrypt(coffee)
attempts = {f"encrypted ({key.fingerprint})": encrypted_coffee,
            "decrypted, right key": key.decrypt(encrypted_coffee),
            f"decrypted, wrong key ({wrong_key.fingerprint})": wrong_key.decrypt(encrypted_coffee)}
fig = viz.plot_images(list(attempts.values()), list(attempts), "Decrypting with the right and with a wrong key",
                      size=2.3)
for name, image in {"plain": coffee, **attempts}.items():
    error = np.abs(image.astype(int) - coffee.astype(int)).mean()
    print(f"{name:40s} mean |difference| from plain: {error:6.2f}   pixels equal: {(image == coffee).mean():.1%}")

# %% [markdown]
# *Figure 7. The encrypted coffee cup, its decryption with the right key (identical to the plain image of
# figure 6) and with a wrong key (still noise inside every block). The printed mean differences quantify it.*

# %% [markdown]
# ## 9 · The same at the shipped backbone's scale
#
# The shipped backbone `encvit-tiny` takes 32 x 32 images in 4 x 4 patches, so its key permutes 48 values per
# block. On these small images a block is a large part of the picture, and the encryption hides more.

# %%
images, titles = [], []
for group in (clothes, digits):
    images += list(group.values()) + [tiny_key.encrypt(image) for image in group.values()]
    titles += list(group) * 2
fig = viz.plot_images(images, titles, f"Shipped samples at 32 x 32, plain and encrypted with the 4 x 4 key "
                      f"{tiny_key.fingerprint}", ncols=len(clothes),
                      row_labels=["clothes", "encrypted", "digits", "encrypted"], size=1.1)

# %% [markdown]
# *Figure 8. The shipped clothes (Fashion-MNIST) and digits (MNIST), grey images expanded to three channels,
# plain and encrypted with the 4 x 4 key of figure 2. Rows 2 and 4 are what a model trained on encrypted data sees.*

# %% [markdown]
# ## 10 · Why a frozen patch embedding sees a different input
#
# A ViT's first layer, the patch embedding, multiplies each flattened block x by a matrix E (a convolution with
# stride M). On an encrypted block it computes E x' = E P x, which is not E x: the token is a different vector.
# We measure how different with the cosine similarity between the token of a plain block and the token of the
# same block encrypted, `model.patch_embed(x)` on both (`viz.patch_token_similarity`). A model adapted to the key,
# E' = E Pᵀ (`adapt_to_key`), gives E' P x = E x again: similarity 1.
#
# First the shipped backbone `encvit-tiny` (pretrained by the project on Fashion-MNIST), on Fashion-MNIST test images.

# %%
tiny = create_backbone("encvit-tiny").eval()
geometry = describe(tiny, "encvit-tiny")
print(geometry)
fashion = load_dataset("fashion5k", geometry.image_size, geometry.channels, limit=N_TOKEN_IMAGES).test.images
plain_x = BatchPreprocess(geometry.image_size, geometry.channels)(fashion)
encrypted_x = BatchPreprocess(geometry.image_size, geometry.channels, key=tiny_key)(fashion)
tiny_adapted = adapt_to_key(tiny, tiny_key)
similarity = {"frozen E": viz.patch_token_similarity(tiny, plain_x, encrypted_x),
              "adapted E P^T": viz.patch_token_similarity(tiny, plain_x, encrypted_x, other=tiny_adapted)}
# Blocks of one value (the black background) are unchanged by any permutation: count them apart.
uniform = viz.uniform_blocks(plain_x, tiny_key.block_size)
print(f"{uniform.float().mean():.0%} of the blocks are uniform (one value); the histogram shows the others")
fig = viz.plot_token_similarity(similarity, tuple(tiny.patch_embed.grid_size),
                                f"encvit-tiny: patch tokens of {len(fashion)} Fashion-MNIST images, "
                                f"plain vs encrypted (key {tiny_key.fingerprint})", include=~uniform)
for name, s in similarity.items():
    print(f"{name:14s} mean cosine similarity: blocks with content {s[~uniform].mean():.3f}, "
          f"uniform blocks {s[uniform].mean():.3f}")

# %% [markdown]
# *Figure 9. Left: the cosine similarity between the patch token of a plain block and of the same block
# encrypted, over the blocks with content (not of one value) of all images; with the frozen embedding E (blue)
# and with the adapted E' = E Pᵀ (orange, all at 1); counts on a log scale. Right: the same for every patch of
# the first image, on the 8 x 8 patch grid. A block of one value (the black background of Fashion-MNIST) is
# unchanged by any permutation, so its token agrees (similarity 1); the tokens of blocks with content point
# elsewhere.*
#
# The same for a paper-scale architecture: timm's `vit_small_patch16_224` with **random** weights (no network is
# needed), on the two photographs cropped to 224 x 224, with the 16 x 16 key.

# %%
vit_s = create_backbone("vit_small_patch16_224", pretrained=False).eval()
squares = torch.from_numpy(np.stack([to_array(Image.fromarray(getattr(skimage.data, name)()), resize=(224, 224))
                                     for name in photos])).permute(0, 3, 1, 2)
plain_224 = BatchPreprocess(224, 3)(squares)
encrypted_224 = BatchPreprocess(224, 3, key=key)(squares)
vit_s_adapted = adapt_to_key(vit_s, key)
uniform_224 = viz.uniform_blocks(plain_224, key.block_size)
similarity_224 = {"frozen E": viz.patch_token_similarity(vit_s, plain_224, encrypted_224),
                  "adapted E P^T": viz.patch_token_similarity(vit_s, plain_224, encrypted_224, other=vit_s_adapted)}
fig = viz.plot_token_similarity(similarity_224, tuple(vit_s.patch_embed.grid_size),
                                f"vit_small_patch16_224 (random weights): tokens of the two photographs, "
                                f"plain vs encrypted (key {key.fingerprint})", include=~uniform_224)
print(f"{int(uniform_224.sum())} of {uniform_224.numel()} blocks are uniform")
for name, s in similarity_224.items():
    print(f"{name:14s} mean cosine similarity {s.mean():.3f}, min {s.min():.3f}")

# %% [markdown]
# *Figure 10. As figure 9, for ViT-S/16 at 224 x 224 with random weights: 196 tokens per photograph. The map on
# the right is the cat; its 14 x 14 grid shows the similarity of each patch's token with the frozen and the
# adapted embedding.*

# %% [markdown]
# ## 11 · The exact adaptation E' = E Pᵀ, verified numerically
#
# `adapt_to_key(model, key)` returns a copy whose patch-embedding weight has its columns permuted by the key
# (`E[:, pixel_permutation]`); block scrambling is absorbed by permuting the patch rows of the position
# embedding, negative-positive by flipping the sign of the matching columns (inputs are normalised with
# mean = std = 0.5, so x -> 1 - x becomes z -> -z). The claim: **the adapted model's logits on encrypted images
# equal the plain model's logits on plain images.** First the column permutation itself:

# %%
weight = tiny.patch_embed.proj.weight.reshape(tiny.embed_dim, -1)
adapted_weight = tiny_adapted.patch_embed.proj.weight.reshape(tiny.embed_dim, -1)
print("adapted E == E[:, pixel_permutation]:",
      torch.equal(adapted_weight, weight[:, torch.from_numpy(tiny_key.pixel_permutation)]))

# %% [markdown]
# Now the logits, for every key option, on the shipped backbone (Fashion-MNIST test images) and on ViT-S/16
# (the two photographs):

# %%
options = {"pixel shuffling": {}, "+ block scrambling": {"scramble": True}, "+ negative-positive": {"neg_pos": True},
           "+ both": {"scramble": True, "neg_pos": True}}
rows = []
with torch.inference_mode():
    for name, model, images in (("encvit-tiny", tiny, fashion[:64]), ("vit_small_patch16_224", vit_s, squares)):
        info = describe(model, name)
        reference = model(BatchPreprocess(info.image_size, info.channels)(images))  # plain model, plain images
        for option, flags in options.items():
            k = Key.generate(info.patch_size, info.channels, passphrase=PASSPHRASE, **flags)
            encrypted = BatchPreprocess(info.image_size, info.channels, key=k)(images)
            adapted_logits = adapt_to_key(model, k).eval()(encrypted)
            frozen_logits = model(encrypted)
            rows.append({"backbone": name, "key": option, "images": len(images),
                         "largest |logit|": reference.abs().max().item(),
                         "max |diff|, adapted": (adapted_logits - reference).abs().max().item(),
                         "max |diff|, frozen": (frozen_logits - reference).abs().max().item(),
                         "same top-1, adapted": bool((adapted_logits.argmax(1) == reference.argmax(1)).all())})
table = pd.DataFrame(rows)
with pd.option_context("display.float_format", "{:.3g}".format):
    display(table)

# %%
worst = table["max |diff|, adapted"].max()
print(f"largest logit difference, adapted model on encrypted vs plain model on plain images: {worst:.2e}")
assert worst < 1e-3 and table["same top-1, adapted"].all()

# %% [markdown]
# The adapted model reproduces the plain model's logits up to float rounding (compare the printed difference
# with the largest logit), for every key option and both backbones; the frozen model on the same encrypted
# images is far off.
#
# This is exact only because the normalisation is the same for every channel: with ImageNet's per-channel
# mean and standard deviation a value that moves from red to blue is normalised with blue's statistics, and no
# column permutation can undo that. `adapt_to_key` refuses such a model rather than return a wrong one:

# %%
try:
    adapt_to_key(vit_s, key, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
except KeyMismatchError as error:
    print(f"{type(error).__name__}: {error}")

# %% [markdown]
# ## What this means for fine-tuning
#
# A method that can train the patch embedding (full fine-tuning, or the paper's proposed method: MeLo plus a
# trainable patch embedding) can learn E Pᵀ and so recover the pretrained model's view of the images. MeLo
# freezes the patch embedding and has to compensate for the scrambled tokens with low-rank updates inside the
# blocks. Notebook `02_comparing_methods` compares the three methods on plain and encrypted images.
