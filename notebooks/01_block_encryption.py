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
#    encryption exactly;
# 7. on a colour image the shuffle moves values between truly different channels; on a grey one it cannot, and
#    the effective key is smaller.
#
# Everything is done by the package (`encvit.cipher.Key`, `encvit.models.adapt`, `encvit.demo.viz`); the cells only
# call it.
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

from encvit.attacks.leaks import log2_factorial
from encvit.cipher import Key, load_image, to_array
from encvit.common.errors import KeyMismatchError
from encvit.common.shipped import list_samples
from encvit.data import load_dataset
from encvit.demo import viz
from encvit.models import BatchPreprocess, adapt_to_key, create_backbone, describe

QUICK = os.environ.get("ENCVIT_QUICK") == "1"
N_TOKEN_IMAGES = 64 if QUICK else 512  # Fashion-MNIST test images for the token-similarity statistics
N_EQUIVALENT_KEYS = 100 if QUICK else 1000  # keys that encrypt every grey image alike (section 12)
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
# that the package ships (`encvit.common.shipped.list_samples()`), at 32 x 32.

# %%
photos = {
    name: to_array(Image.fromarray(getattr(skimage.data, name)()), resize=(336, 224)) for name in ("chelsea", "coffee")
}
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
fig = viz.plot_block_grid(
    [cat],
    ["chelsea"],
    key.block_size,
    f"Cut into {key.block_size} x {key.block_size} blocks: {grid_h} x {grid_w} = {grid_h * grid_w} blocks",
    highlight=chosen,
    size=4.6,
)

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
print(
    "every encrypted block == plain block[pixel_permutation]:",
    np.array_equal(encrypted_blocks, plain_blocks[:, key.pixel_permutation]),
)

# %% [markdown]
# ## 4 · Blocks before and after

# %%
fig = viz.plot_block_grid(
    [cat, encrypted_cat],
    ["plain", f"encrypted with key {key.fingerprint}"],
    key.block_size,
    "The whole image: plain vs encrypted (pixel shuffling only)",
    highlight=chosen,
)

# %% [markdown]
# *Figure 3. The photograph and its encryption. The coarse picture survives: every block keeps its own values,
# so its mean brightness stays, but inside a block the pixels are scrambled and their colours mixed.*

# %%
fig = viz.plot_blocks_side_by_side(
    cat, encrypted_cat, key.block_size, chosen, "Four blocks enlarged: plain (top) and encrypted (bottom)"
)

# %% [markdown]
# *Figure 4. The four outlined blocks of figure 3, enlarged, before (top) and after (bottom) encryption. The
# same permutation was applied to each; the texture and edges within a block are gone.*

# %% [markdown]
# ## 5 · The values of a block are kept
#
# Pixel shuffling only moves values, so each block holds the same multiset of values after encryption. One
# channel alone does not: values move between red, green and blue.

# %%
fig = viz.plot_block_histogram(
    cat,
    encrypted_cat,
    key.block_size,
    chosen[0],
    channel=0,
    suptitle=f"Block {chosen[0]}: the same values, in other places and channels",
)
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
fig = viz.plot_images(
    gallery, titles, "Encryption options on the two photographs", ncols=len(keys) + 1, row_labels=list(photos), size=1.9
)

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
checks.append(
    {
        "image": f"{len(batch)} samples (torch batch)",
        "key": "4 x 4 pixel shuffling",
        "exact": bool(torch.equal(tiny_key.decrypt(tiny_key.encrypt(batch)), batch)),
    }
)
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
attempts = {
    f"encrypted ({key.fingerprint})": encrypted_coffee,
    "decrypted, right key": key.decrypt(encrypted_coffee),
    f"decrypted, wrong key ({wrong_key.fingerprint})": wrong_key.decrypt(encrypted_coffee),
}
fig = viz.plot_images(
    list(attempts.values()), list(attempts), "Decrypting with the right and with a wrong key", size=2.3
)
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
fig = viz.plot_images(
    images,
    titles,
    f"Shipped samples at 32 x 32, plain and encrypted with the 4 x 4 key {tiny_key.fingerprint}",
    ncols=len(clothes),
    row_labels=["clothes", "encrypted", "digits", "encrypted"],
    size=1.1,
)

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
similarity = {
    "frozen E": viz.patch_token_similarity(tiny, plain_x, encrypted_x),
    "adapted E P^T": viz.patch_token_similarity(tiny, plain_x, encrypted_x, other=tiny_adapted),
}
# Blocks of one value (the black background) are unchanged by any permutation: count them apart.
uniform = viz.uniform_blocks(plain_x, tiny_key.block_size)
print(f"{uniform.float().mean():.0%} of the blocks are uniform (one value); the histogram shows the others")
fig = viz.plot_token_similarity(
    similarity,
    tuple(tiny.patch_embed.grid_size),
    f"encvit-tiny: patch tokens of {len(fashion)} Fashion-MNIST images, "
    f"plain vs encrypted (key {tiny_key.fingerprint})",
    include=~uniform,
)
for name, s in similarity.items():
    print(
        f"{name:14s} mean cosine similarity: blocks with content {s[~uniform].mean():.3f}, "
        f"uniform blocks {s[uniform].mean():.3f}"
    )

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
squares = torch.from_numpy(
    np.stack([to_array(Image.fromarray(getattr(skimage.data, name)()), resize=(224, 224)) for name in photos])
).permute(0, 3, 1, 2)
plain_224 = BatchPreprocess(224, 3)(squares)
encrypted_224 = BatchPreprocess(224, 3, key=key)(squares)
vit_s_adapted = adapt_to_key(vit_s, key)
uniform_224 = viz.uniform_blocks(plain_224, key.block_size)
similarity_224 = {
    "frozen E": viz.patch_token_similarity(vit_s, plain_224, encrypted_224),
    "adapted E P^T": viz.patch_token_similarity(vit_s, plain_224, encrypted_224, other=vit_s_adapted),
}
fig = viz.plot_token_similarity(
    similarity_224,
    tuple(vit_s.patch_embed.grid_size),
    f"vit_small_patch16_224 (random weights): tokens of the two photographs, "
    f"plain vs encrypted (key {key.fingerprint})",
    include=~uniform_224,
)
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
print(
    "adapted E == E[:, pixel_permutation]:",
    torch.equal(adapted_weight, weight[:, torch.from_numpy(tiny_key.pixel_permutation)]),
)

# %% [markdown]
# Now the logits, for every key option, on the shipped backbone (Fashion-MNIST test images) and on ViT-S/16
# (the two photographs):

# %%
options = {
    "pixel shuffling": {},
    "+ block scrambling": {"scramble": True},
    "+ negative-positive": {"neg_pos": True},
    "+ both": {"scramble": True, "neg_pos": True},
}
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
            rows.append(
                {
                    "backbone": name,
                    "key": option,
                    "images": len(images),
                    "largest |logit|": reference.abs().max().item(),
                    "max |diff|, adapted": (adapted_logits - reference).abs().max().item(),
                    "max |diff|, frozen": (frozen_logits - reference).abs().max().item(),
                    "same top-1, adapted": bool((adapted_logits.argmax(1) == reference.argmax(1)).all()),
                }
            )
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
# ## 12 · Colour: where the shuffle crosses channels
#
# Every image at the shipped backbone's scale so far was grey, copied into three channels. There a value that the
# key moves from the red to the blue channel lands on an identical copy of itself: the cross-channel part of the
# shuffle does nothing. The paper's images (CIFAR-10) are in colour, and so is the kit's colour data: `cfashion5k`
# holds the images of `fashion5k`, each with a fixed foreground and background colour of its own, drawn without
# looking at the labels (`encvit.data.colour`). The shipped samples `cfashion-0.png` ... `cfashion-9.png` are the
# garments of `fashion-0.png` ... `fashion-9.png` in colour. We encrypt one of them, in grey and in colour, with
# the 4 x 4 key of figure 2, and follow two blocks: the top-left corner (background) and the block with the most
# distinct colours (an edge of the garment).

# %%
coloured = {s.label: load_image(s.path, channels=3, resize=(32, 32)) for s in list_samples("cfashion5k")}
garment = "Ankle boot"
grey_image, colour_image = clothes[garment], coloured[garment]
grey_encrypted, colour_encrypted = tiny_key.encrypt(grey_image), tiny_key.encrypt(colour_image)
colour_blocks = viz.image_blocks(colour_image, tiny_key.block_size)
distinct_colours = [
    len(np.unique(viz.block_image(b, 3, tiny_key.block_size).reshape(-1, 3), axis=0)) for b in colour_blocks
]
background, edge = 0, int(np.argmax(distinct_colours))
print(
    f"{garment}: background block {background}, edge block {edge} ({distinct_colours[edge]} distinct colours "
    f"among its 16 pixels)"
)
fig = viz.plot_block_grid(
    [grey_image, grey_encrypted, colour_image, colour_encrypted],
    ["grey (fashion5k)", "grey, encrypted", "colour (cfashion5k)", "colour, encrypted"],
    tiny_key.block_size,
    f"The same {garment.lower()} in grey and in colour, encrypted with the 4 x 4 key {tiny_key.fingerprint}",
    highlight=[background, edge],
    size=2.6,
)

# %% [markdown]
# *Figure 11. The grey sample and its colour version, each plain and encrypted with the same key; the outlines mark
# the background block (blue) and the edge block (orange). The grey image's flat black background stays black; the
# colour image's flat background turns into a patchwork, the same in every background block, since one permutation
# acts on every block (so the flat blocks of an encrypted colour image still show as a repeated pattern).*
#
# The two blocks enlarged, as 4 x 4 grids of RGB pixels: each pixel of an encrypted block takes its red, green
# and blue from three positions of the plain block, usually of other pixels and other channels.

# %%
block_pixels, block_titles = [], []
for name, plain, encrypted in (("grey", grey_image, grey_encrypted), ("colour", colour_image, colour_encrypted)):
    for index, where in ((background, "background"), (edge, "edge")):
        for state, image in (("plain", plain), ("encrypted", encrypted)):
            block_pixels.append(
                viz.block_image(viz.image_blocks(image, tiny_key.block_size)[index], 3, tiny_key.block_size)
            )
            block_titles.append(f"{name}\n{where}\n{state}")
fig = viz.plot_images(
    block_pixels, block_titles, "One block's 48 values as 4 x 4 RGB pixels, before and after the cipher", size=1.3
)

# %% [markdown]
# *Figure 12. The four grey blocks (left), then the four colour ones. Grey: the background block is 48 zeros and
# stays so (no permutation changes a block of one value); the edge block's encrypted pixels get colours because
# their three channels now come from different grey pixels. Colour: the background block is one colour, i.e. three
# values, and the shuffle deals them out to every channel: a flat colour becomes a patchwork. The edge block mixes
# the garment's and the background's colours.*
#
# The edge block's 48 values as (red, green, blue) per pixel, plain and encrypted, and where the key takes each
# encrypted channel's 16 values from:

# %%
m2 = tiny_key.block_size**2
plain_rgb = viz.block_image(colour_blocks[edge], 3, tiny_key.block_size)
encrypted_rgb = viz.block_image(viz.image_blocks(colour_encrypted, tiny_key.block_size)[edge], 3, tiny_key.block_size)
triples = pd.concat(
    {
        state: pd.DataFrame([[", ".join(map(str, pixel)) for pixel in row] for row in rgb])
        for state, rgb in (("plain", plain_rgb), ("encrypted", encrypted_rgb))
    },
    axis=1,
)
display(triples)
source_channel = tiny_key.pixel_permutation // m2  # the plain channel of the value each encrypted position takes
target_channel = np.arange(tiny_key.block_length) // m2
flow = pd.crosstab(
    pd.Series(target_channel, name="encrypted channel"), pd.Series(source_channel, name="from plain channel")
)
display(flow.rename(index=dict(enumerate("RGB")), columns=dict(enumerate("RGB"))))
print(
    f"{(source_channel != target_channel).sum()} of the key's {tiny_key.block_length} positions take their value "
    f"from another channel"
)

# %% [markdown]
# The same happens in every block of every image. Over the ten shipped clothes, how many blocks does the cipher
# leave exactly as they were?

# %%
unchanged = {}
for name, images in (("grey (fashion5k)", clothes), ("colour (cfashion5k)", coloured)):
    plain = np.concatenate([viz.image_blocks(i, tiny_key.block_size) for i in images.values()])
    encrypted = np.concatenate([viz.image_blocks(tiny_key.encrypt(i), tiny_key.block_size) for i in images.values()])
    unchanged[name] = {"blocks": len(plain), "left unchanged by the cipher": int((plain == encrypted).all(1).sum())}
pd.DataFrame(unchanged).T

# %% [markdown]
# **The effective key.** A key orders a block's 48 values: 48! orderings. On a grey image the three channels of a
# pixel hold the same value, so all that matters is *which pixel* each encrypted position reads
# (`pixel_permutation % 16`), not which channel: any two keys that differ only by swapping channels within pixels
# encrypt every grey image identically. There are (3!)^16 such keys for each distinct encryption of grey images,
# so grey images see 48! / (3!)^16 of the 48! orderings. (A grey image stored in one channel, with a 4 x 4 x 1 key,
# would have only 16!.) We count them, and check the claim by making keys that differ from `tiny_key` only by
# channel swaps within pixels and encrypting both samples with each:

# %%
counts = {
    "colour, 4 x 4 x 3 (48! orderings)": log2_factorial(tiny_key.block_length),
    "grey in three channels (48! / (3!)^16)": log2_factorial(tiny_key.block_length) - m2 * log2_factorial(3),
    "grey in one channel, 4 x 4 x 1 key (16!)": log2_factorial(m2),
}
display(
    pd.DataFrame(
        {
            "distinct encryptions": {k: f"{2**bits:.2e}" for k, bits in counts.items()},
            "bits": {k: round(bits, 1) for k, bits in counts.items()},
        }
    )
)
rng = np.random.default_rng(0)
pixel, channel = np.arange(tiny_key.block_length) % m2, np.arange(tiny_key.block_length) // m2
equivalent = []
for _ in range(N_EQUIVALENT_KEYS):
    swap = np.stack([rng.permutation(3) for _ in range(m2)])  # a channel order for every pixel of the plain block
    within_pixels = swap[pixel, channel] * m2 + pixel  # plain position -> the same pixel in another channel
    equivalent.append(Key(tiny_key.block_size, 3, within_pixels[tiny_key.pixel_permutation]))
same_pixels = all(np.array_equal(k.pixel_permutation % m2, tiny_key.pixel_permutation % m2) for k in equivalent)
grey_ciphertexts = {k.encrypt(grey_image).tobytes() for k in equivalent}
colour_ciphertexts = {k.encrypt(colour_image).tobytes() for k in equivalent}
print(
    f"{len({k.fingerprint for k in equivalent})} distinct keys, each reading the same pixels as "
    f"{tiny_key.fingerprint}: {same_pixels}"
)
print(
    f"distinct encryptions of the grey {garment.lower()}: {len(grey_ciphertexts)}; "
    f"of the colour one: {len(colour_ciphertexts)}"
)
invisible = m2 * log2_factorial(3)
print(
    f"(3!)^16 = {2**invisible:.2e} keys per grey encryption: {invisible:.1f} of the key's "
    f"{log2_factorial(tiny_key.block_length):.1f} bits are invisible on grey images"
)

# %% [markdown]
# On grey images 41 of the key's 203 bits are invisible: every key above encrypts the grey ankle boot the same way,
# while each encrypts the colour one differently. An attacker of grey images only has to find which pixel each
# position reads (the "same pixel" score of notebook 04, "right pixel" in the app's Attacker's view); on colour
# images the channel too. For a model the difference is what the patch embedding must undo: on colour images the key
# mixes the red, green and blue of different pixels into one token, and a flat coloured background becomes texture,
# while E' = E Pᵀ (section 11) still undoes it exactly.

# %% [markdown]
# ## What this means for fine-tuning
#
# A method that can train the patch embedding (full fine-tuning, or the paper's proposed method: MeLo plus a
# trainable patch embedding) can learn E Pᵀ and so recover the pretrained model's view of the images. MeLo
# freezes the patch embedding and has to compensate for the scrambled tokens with low-rank updates inside the
# blocks. Notebook `02_comparing_methods` compares the three methods on plain and encrypted images.
