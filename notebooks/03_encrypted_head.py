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
# # 03 · Training a classification head on encrypted features (BlindTuner on CKKS)
#
# Notebooks 01 and 02 hide *images* from whoever trains the model. Here the data owner hides *features*, with
# homomorphic encryption: the server trains a softmax head on ciphertexts it cannot read, as in BlindTuner
# (Panzade et al., 2024) and HETAL (Lee et al., ICML 2023). The protocol, step by step:
#
# 1. **Client** (the data owner, holds the secret key): runs the frozen backbone `encvit-tiny` on its own images
#    and scales the features;
# 2. makes the CKKS keys and sends the server only the *evaluation* keys (relinearisation and rotations);
# 3. packs many samples and features into each ciphertext and sends them, with one-hot labels, once;
# 4. **Server** (no secret key): trains weights and bias with mini-batch Nesterov steps and a polynomial softmax,
#    entirely on ciphertexts. TenSEAL has no bootstrapping: when a ciphertext's levels run out, the server sends
#    the encrypted weights back and the client re-encrypts them (a *refresh*; HETAL bootstraps instead);
# 5. the client decrypts the final weights and uses them as the head of its backbone.
#
# Everything is done by `encvit.fhe`; the cells only call it. Sizes come from the environment:
# `ENCVIT_QUICK=1` (set by the test suite) trains on a few dozen images.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice about a missing widget library

import numpy as np
import pandas as pd
import torch
from IPython.display import display
from tenseal import sealapi

from encvit import viz
from encvit.backbones import create_backbone
from encvit.fhe import ckks
from encvit.fhe.command import compare, head_model
from encvit.fhe.features import dataset_features
from encvit.fhe.report import key_table, plot_training_curves, wire_table
from encvit.fhe.train import FHEConfig, Protocol, setup, train_reference

QUICK = os.environ.get("ENCVIT_QUICK") == "1"
LIMIT = 64 if QUICK else None  # images per split; None: all of mnist5k (3,600 train, 400 val, 1,000 test)
EPOCHS = 2 if QUICK else 4
BATCH = 32 if QUICK else 1024
viz.notebook_style()
if QUICK:
    torch.set_num_threads(1)  # the test suite runs beside other jobs: one thread avoids contention
print(f"quick mode: {QUICK}; images per split: {LIMIT or 'all'}, epochs {EPOCHS}, batch {BATCH}")

# %% [markdown]
# ## 1 · The client extracts and scales features (in plaintext, at home)
#
# A feature is the backbone's pre-logits vector (96 values for `encvit-tiny`). The client standardises each
# feature, divides by √d so that a sample's norm is about 1, and appends a constant 1 for the bias: logits then
# start near zero, inside the range where the polynomial softmax is accurate. The trained weights are folded back
# onto raw features at the end.

# %%
backbone = create_backbone("encvit-tiny")  # the shipped weights
features = dataset_features("encvit-tiny", "mnist5k", LIMIT, model=backbone)
config = FHEConfig(epochs=EPOCHS, batch_size=BATCH, limit=LIMIT)
prepared = setup(features, config)
print(f"train {prepared.x.shape[0]} samples x {prepared.x.shape[1]} scaled features (incl. bias), "
      f"{len(features.classes)} classes; val {len(features.val[1])}, test {len(features.test[1])}")
print(f"|x| after scaling: mean {np.linalg.norm(prepared.x[:, :-1], axis=1).mean():.2f}")
display(pd.Series(prepared.poly.describe(), name="polynomial softmax").to_frame())

# %% [markdown]
# The polynomial replaces softmax's exponentials and division: p_k = 1/K + a·z_k + b·(z_k² − mean z²) +
# c·(z_k³ − mean z³). It sums to one and is the gradient of a convex function (b² ≤ 3ac), like softmax, so
# training is stable; it is fitted on logits in [−2, 2] (largest error about 0.12 there) and training settles at
# a margin of about 3.5, where its signal is still a convex loss's gradient. On ciphertexts it costs three levels.

# %% [markdown]
# ## 2 · Keys: who holds what
#
# The client makes every key. The server receives the CKKS parameters, the relinearisation key and rotation keys
# for exactly the rotation steps of the packed layout, and nothing that decrypts.

# %%
protocol = Protocol(prepared, config)
protocol.exchange_keys()
params = prepared.params.describe()
print(f"CKKS: ring degree {params['poly_modulus_degree']} ({params['slots']} slots), coefficient moduli "
      f"{params['coeff_mod_bit_sizes']} = {params['total_modulus_bits']} bits, scale 2^{params['scale_bits']}, "
      f"{params['levels']} levels -> {params['security_bits']}-bit security "
      f"(the HE standard allows at most {params['max_bits_for_128']} bits for 128-bit at this ring degree)")
print(f"rotation steps the server can do: {prepared.layout.rotation_steps()}")
display(key_table(protocol.client, protocol.server))

# %% [markdown]
# ## 3 · What crosses the wire
#
# The layout puts 3 axes in a ciphertext's slots: samples × features × class slots (details in
# `encvit.fhe.packing`). A block of samples becomes one ciphertext per group of features, plus one for the labels.

# %%
protocol.upload()
layout = prepared.layout.describe()
print(f"one ciphertext holds {layout['samples_per_ciphertext']} samples x {layout['features_per_ciphertext']} "
      f"features x {layout['class_slots']} class slots; a block is {layout['ciphertexts_per_block']} + 1 ciphertexts")
one = protocol.client.encrypt(np.zeros(prepared.params.slots))
print(f"one fresh ciphertext on the wire: {len(one):,} bytes (seeded symmetric encryption, compressed)")
display(wire_table({"bytes": protocol.wire.summary()}).style.format({"MB": "{:.1f}"}).hide(axis="index"))

# %% [markdown]
# ## 4 · The server cannot decrypt
#
# The server's context is TenSEAL's public context: asking it for the secret key fails, so no decryptor can be
# built. Reading a ciphertext works; its values stay hidden.

# %%
ciphertext = ckks.ciphertext_from_bytes(protocol.server.context, one)
print(f"the server reads a ciphertext of {ciphertext.coeff_modulus_size()} primes x {ciphertext.poly_modulus_degree()} "
      f"coefficients x {ciphertext.size()} polynomials")
try:
    sealapi.Decryptor(protocol.server.context.seal_context().data, ckks.secret_key(protocol.server.context))
except ckks.SecretKeyError as error:
    print(f"server decryption attempt: {type(error).__name__}: {error}")

# %% [markdown]
# ## 5 · Training on ciphertexts, next to plaintext training
#
# The server runs mini-batch Nesterov steps; after each epoch it sends the weights to the client, which decrypts
# them and measures accuracy (in a deployment this per-epoch check is optional). The plaintext trainer runs the
# same polynomial, batches and hyperparameters in numpy; a third run uses the exact softmax.

# %%
encrypted = protocol.train(features, progress=False)  # the CLI shows a progress bar; here the table says it all
reference = train_reference(features, config)
exact = train_reference(features, config, exact=True)  # what the polynomial costs
display(pd.DataFrame(encrypted.rows).round(4))

# %%
title = f"Softmax head on {len(features.train[1]):,} encrypted mnist5k feature vectors (encvit-tiny)"
fig = plot_training_curves(encrypted.rows, reference.rows, title, exact=exact.rows)

# %% [markdown]
# *Figure 1. Test accuracy (left) and exact cross-entropy on the training set (right) after each epoch, for the
# head trained by the server on CKKS ciphertexts and decrypted by the client (orange markers), for the same
# training in plaintext numpy (blue line), and for plaintext training with the exact softmax instead of the
# polynomial (grey dots). Encrypted and plaintext coincide: CKKS noise (about 10⁻⁵ per weight at most) does not
# change a prediction. The difference to the grey curve is the polynomial's own effect, separate from encryption.*

# %% [markdown]
# ## 6 · The cost of no bootstrapping, and the result
#
# One iteration uses 6 levels (logits 1, polynomial 4, gradient 1) and the parameters have 6, so every iteration
# after the first starts with a refresh round trip.

# %%
gap = compare(encrypted, reference)
stats = encrypted.stats
print(f"test accuracy: encrypted {gap['encrypted_test_acc']:.2f}%, plaintext {gap['plain_test_acc']:.2f}%; "
      f"weights differ by at most {gap['max_abs_weight_diff']:.1e} ({100 * gap['max_relative_weight_diff']:.4f}% "
      f"of the largest weight)")
ops = stats["operations"]
print(f"{stats['iterations']} iterations, {stats['seconds_per_iteration']:.2f} s each on this machine; "
      f"{stats['refreshes']} refreshes took {stats['refresh_seconds']:.1f} s in all; rotations {ops['rotate']:,}, "
      f"ciphertext products {ops['multiply']:,}, relinearisations {ops['relinearize']:,}")
display(wire_table(stats).style.format({"MB": "{:.1f}"}).hide(axis="index"))

# %% [markdown]
# The client folds its feature scaling into the decrypted weights: `head.weight` and `head.bias` act on raw
# backbone features, so the backbone with this head classifies images directly (this is what `encvit fhe-train`
# saves as `adapter.safetensors`).

# %%
model = head_model(features, encrypted, backbone)
with torch.no_grad():
    logits = model.head(torch.from_numpy(features.test[0]))
correct = logits.argmax(1).numpy() == features.test[1]
print(f"backbone + folded head on raw test features: {100 * correct.mean():.2f}% "
      f"(decrypted head on scaled features: {encrypted.rows[-1]['test_acc']:.2f}%)")
