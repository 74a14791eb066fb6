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
# # 03 · Training a classification head on encrypted features (BlindTuner on CKKS)
#
# Notebooks 01 and 02 hide *images* from whoever trains the model. Here the data owner hides *features*, with
# homomorphic encryption: the server trains a softmax head on ciphertexts it cannot read, as in BlindTuner
# (Panzade et al., 2024) and HETAL (Lee et al., ICML 2023). The protocol, step by step:
#
# 1. **Client** (the data owner, holds the secret key): runs the frozen backbone `encvit-tiny` on its own images
#    (or reads features that any extractor wrote: `encvit fhe-train --features F.npz`), scales them and keeps the
#    principal components that validation says are worth their cost;
# 2. makes the CKKS keys and sends the server only the *evaluation* keys (relinearisation and rotations);
# 3. packs its features densely (every slot of every ciphertext holds a different value: nothing replicated) and
#    sends them, with one-hot labels, once; and its validation features, also encrypted, for early stopping. The
#    server keeps them on its disk and reads one batch at a time;
# 4. **Server** (no secret key): trains weights and bias with mini-batch Nesterov steps, a cosine learning-rate
#    schedule and a polynomial softmax, entirely on ciphertexts. TenSEAL has no bootstrapping: when a ciphertext's
#    levels run out, the server sends the encrypted weights back and the client re-encrypts them (a *refresh*;
#    HETAL bootstraps instead);
# 5. after every epoch the server computes the *encrypted validation logits* and sends them with its next
#    refresh; the client decrypts them, scores the epoch and decides when to stop, as in HETAL;
# 6. the client keeps the weights of the best epoch and uses them as the head of its backbone.
#
# Everything is done by `encvit.fhe`; the cells only call it. Sizes come from the environment:
# `ENCVIT_QUICK=1` (set by the test suite) trains on a few dozen images. Section 7 shows the complete runs of
# `encvit fhe-train` on both datasets, shipped with the package; section 8 the paper's width, 768 features, and what
# the client's projection buys there; section 9 the server in a process of its own, reached over HTTP.

# %%
import os
import warnings
from dataclasses import replace

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice about a missing widget library

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from tenseal import sealapi

from encvit.demo import viz
from encvit.fhe import ckks
from encvit.fhe.components import choose
from encvit.fhe.config import FHEConfig
from encvit.fhe.features import dataset_features
from encvit.fhe.pipeline import compare, head_model
from encvit.fhe.report import key_table, plot_training_curves, runs_table, shipped_runs, wire_table
from encvit.fhe.train import Protocol, setup, train_reference
from encvit.models import create_backbone

QUICK = os.environ.get("ENCVIT_QUICK") == "1"
LIMIT = 64 if QUICK else None  # images per split; None: all of fashion5k (4,500 train, 500 val, 10,000 test)
EPOCHS = 2 if QUICK else 3  # a short run to show the mechanics; section 7 shows complete runs
BATCH = 32 if QUICK else 1024
viz.notebook_style()
if QUICK:
    torch.set_num_threads(1)  # the test suite runs beside other jobs: one thread avoids contention
print(f"quick mode: {QUICK}; images per split: {LIMIT or 'all'}, epochs {EPOCHS}, batch {BATCH}")

# %% [markdown]
# ## 1 · The client extracts and scales features (in plaintext, at home)
#
# A feature is the backbone's pre-logits vector (96 values for `encvit-tiny`). The client standardises each
# feature and *whitens* them (rotates and rescales so that they are uncorrelated, with a small ridge on the
# eigenvalues): plain gradient descent then converges in tens of epochs instead of hundreds. It may keep only the
# k leading principal components: the server then works on k columns, and an encrypted iteration costs about what
# it costs at width k. The client chooses k on its own validation split, with the numpy twin of the encrypted
# trainer (its exact arithmetic, in plaintext, seconds per candidate): the smallest k within half a point of the
# best candidate (`--components auto`, the default). It divides by √k so that a sample's norm is about 1 and
# appends a constant 1 for the bias: logits then start near zero, inside the range where the polynomial softmax is
# accurate. The trained weights are folded back onto raw features at the end.

# %%
backbone = create_backbone("encvit-tiny")  # the shipped weights
features = dataset_features("encvit-tiny", "fashion5k", LIMIT, model=backbone)
config = FHEConfig(epochs=EPOCHS, batch_size=BATCH, limit=LIMIT)
components, selection = choose(features, config)  # on validation only
display(pd.DataFrame(selection).set_index("components").round(3))
config = replace(config, components=components)
prepared = setup(features, config)
print(
    f"train {prepared.x.shape[0]} samples x {prepared.x.shape[1]} scaled features (incl. bias), "
    f"{len(features.classes)} classes; val {len(features.val[1])}, test {len(features.test[1])}"
)
print(f"|x| after scaling: mean {np.linalg.norm(prepared.x[:, :-1], axis=1).mean():.2f}")
display(pd.Series(prepared.poly.describe(), name="polynomial softmax").to_frame())

# %% [markdown]
# The polynomial replaces softmax's exponentials and division: p_k = 1/K + a·z_k + b·(z_k² − mean z²) +
# c·(z_k³ − mean z³). It sums to one and is the gradient of a convex function (b² ≤ 3ac), like softmax, so
# training is stable; it is fitted on logits in [−4, 4], and training stops pushing a confident sample's logits
# apart at a margin of about 5 (`fixed_point_margin`). On ciphertexts it costs four levels.

# %% [markdown]
# ## 2 · Keys: who holds what
#
# The client makes every key. The server receives the CKKS parameters, the relinearisation key and rotation keys
# for exactly the rotation steps of the packed layout, and nothing that decrypts.

# %%
protocol = Protocol(prepared, config)
protocol.exchange_keys()
params = prepared.params.describe()
print(
    f"CKKS: ring degree {params['poly_modulus_degree']} ({params['slots']} slots), coefficient moduli "
    f"{params['coeff_mod_bit_sizes']} = {params['total_modulus_bits']} bits, scale 2^{params['scale_bits']}, "
    f"{params['levels']} levels -> {params['security_bits']}-bit security "
    f"(the HE standard allows at most {params['max_bits_for_128']} bits for 128-bit at this ring degree)"
)
print(f"rotation steps the server can do: {prepared.layout.rotation_steps()}")
display(key_table(protocol.client, protocol.server))

# %% [markdown]
# ## 3 · What crosses the wire
#
# The layout (`encvit.fhe.packing`) gives each sample of a block of P samples S / P slots (its *phases*); the
# features, padded to a power of two m, are spread over U = m·P/S ciphertexts, each holding a different diagonal
# of the data, so that a sample's dot product with the weights is the sum of U products with rotated weights. The
# rotations are done baby-step giant-step: √U rotations of the weights, √U of partial sums. Two classes share a
# ciphertext as its real and imaginary parts (the data are real), which halves the work. The client packs each
# block twice (the gradient needs the transposed diagonals) plus its labels; the validation features travel once,
# without labels (the client keeps them to score the epochs).

# %%
protocol.upload()
layout = prepared.layout.describe()
print(
    f"a block: {layout['samples_per_block']} samples x {layout['phases']} phases; {layout['features']} columns "
    f"padded to {layout['padded_features']}: {layout['offsets']} offsets ({layout['baby_steps']} baby x "
    f"{layout['giant_steps']} giant steps); {layout['classes']} classes in {layout['class_pairs']} complex "
    f"ciphertexts; {layout['data_ciphertexts_per_block']} ciphertexts per block"
)
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
print(
    f"the server reads a ciphertext of {ciphertext.coeff_modulus_size()} primes x {ciphertext.poly_modulus_degree()} "
    f"coefficients x {ciphertext.size()} polynomials"
)
try:
    sealapi.Decryptor(protocol.server.context.seal_context().data, ckks.secret_key(protocol.server.context))
except ckks.SecretKeyError as error:
    print(f"server decryption attempt: {type(error).__name__}: {error}")

# %% [markdown]
# ## 5 · Training on ciphertexts, validated on ciphertexts, next to plaintext training
#
# The server runs mini-batch Nesterov steps. At the end of every epoch it refreshes the weights, computes the
# validation logits with them and sends these with its next refresh request; the client decrypts them, computes
# validation accuracy and cross-entropy, and answers "go on" or "stop" (after `patience` epochs without a lower
# validation loss) together with the fresh weights. Its decision thus takes effect one iteration late, and no extra
# round trip is needed. The numpy twin runs the same polynomial, batches, learning rates and stopping rule; a third
# run uses the exact softmax. The test accuracy in the table is reported by the client for the figure only; no
# decision looks at it.

# %%
encrypted = protocol.train(features, progress=False)  # the CLI shows a progress bar; here the table says it all
twin = train_reference(features, config)
exact = train_reference(features, config, exact=True)  # what the polynomial costs
display(pd.DataFrame(encrypted.rows).round(4))

# %%
fig = plot_training_curves(
    encrypted.rows,
    twin.rows,
    f"{len(features.train[1]):,} encrypted fashion5k feature vectors, {EPOCHS} epochs at most",
    exact=exact.rows,
)

# %% [markdown]
# *Figure 1. Validation accuracy after each epoch: from the encrypted validation logits that the client decrypted
# (orange dots) and from the numpy twin (blue line), with the epoch the client kept (vertical line); the test
# accuracy of the decrypted head (green, dashed; reported only) and the exact-softmax twin (grey dots). Encrypted
# and plaintext coincide: CKKS noise (about 10⁻⁵ per weight) does not change a prediction.*

# %% [markdown]
# ## 6 · The cost of no bootstrapping
#
# One iteration uses 5 levels (logits 1, polynomial 3: square, cube, and one plaintext product that scales and
# masks every term; gradient 1) and the parameters have 5, so every iteration after the first starts with a
# refresh round trip; the validation logits ride on these round trips. The client also repacks the weights there:
# the gradient leaves them in one form, the next forward pass wants another, and plaintext repacking costs nothing.

# %%
gap = compare(encrypted, twin)
stats = encrypted.stats
print(
    f"kept epoch {gap['encrypted_best_epoch']} (numpy twin: {gap['plain_best_epoch']}); test accuracy: encrypted "
    f"{gap['encrypted_test_acc']:.2f}%, twin {gap['plain_test_acc']:.2f}%; weights differ by at most "
    f"{gap['max_abs_weight_diff']:.1e} ({100 * gap['max_relative_weight_diff']:.4f}% of the largest weight)"
)
ops = stats["operations"]
print(
    f"{stats['iterations']} iterations, {stats['seconds_per_iteration']:.2f} s each on this machine; "
    f"{stats['refreshes']} refreshes; rotations {ops['rotate'] + ops.get('conjugate', 0):,}, ciphertext products "
    f"{ops['multiply']:,}, relinearisations {ops['relinearize']:,}"
)
display(pd.Series(stats["timings"], name="seconds").to_frame())
display(wire_table(stats).style.format({"MB": "{:.1f}"}).hide(axis="index"))

# %% [markdown]
# ## 7 · Complete runs on both datasets, against full-precision training
#
# `encvit fhe-train` with its defaults (at most 60 epochs, cosine schedule from lr 8, patience 10, batch 1024),
# run on fashion5k (in-domain: the backbone was pretrained on the other 55,000 Fashion-MNIST images, the analogue
# of the paper's pretrained features) and on mnist5k (cross-domain: clothes to digits). The reference is what
# "non-encrypted training" means here: scikit-learn's `LogisticRegression` on the same standardised features,
# exact softmax, trained to convergence, its regularisation C chosen on the validation split. The runs are shipped
# in `encvit/fhe/runs/` (the commands are in docs/fhe.md); HETAL's reported time per run is given for scale (a GPU
# with bootstrapping, other datasets: not a like-for-like comparison).

# %%
runs = shipped_runs()
assert runs, "no shipped runs in encvit/fhe/runs (make them with the commands in docs/fhe.md)"
display(runs_table(runs).style.format(precision=2, thousands=","))
fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.4), squeeze=False)
for ax, (name, run) in zip(axes[0], runs.items(), strict=False):
    rows = run["metrics"].to_dict("records")
    twin_rows = [{"epoch": r["epoch"], "val_acc": r["plain_val_acc"]} for r in rows]
    plot_training_curves(rows, twin_rows, f"{name}: reference {run['result']['reference_test_acc']:.2f}% test", ax=ax)
    ax.axhline(run["result"]["reference_test_acc"], color="tab:red", lw=0.8, ls="-.")
fig.tight_layout()

# %% [markdown]
# *Figure 2. The shipped runs: validation accuracy per epoch from the encrypted logits and from the numpy twin,
# the test accuracy the client reported (green, dashed), the kept epoch (vertical line) and the reference's test
# accuracy (red, dash-dotted).*

# %% [markdown]
# The client folds its feature scaling into the decrypted weights: `head.weight` and `head.bias` act on raw
# backbone features, so the backbone with this head classifies images directly (this is what `encvit fhe-train`
# saves as `adapter.safetensors`).

# %%
model = head_model(features, encrypted, backbone)
with torch.no_grad():
    logits = model.head(torch.from_numpy(features.test[0]))
correct = logits.argmax(1).numpy() == features.test[1]
print(
    f"backbone + folded head on raw test features: {100 * correct.mean():.2f}% "
    f"(decrypted head on scaled features: {encrypted.best['test_acc']:.2f}%)"
)

# %% [markdown]
# ## 8 · The paper's width: 768 features, and the client's projection
#
# ViT-B/16 and DeiT-B, the paper's client models, give 768 features. Offline, `scripts/token_features.py` writes a
# 768-feature file from the shipped backbone (its patch tokens averaged over a 2 × 4 grid of image regions), as any
# extractor can: `encvit fhe-train --features F.npz` trains on it. The table and figure below are shipped
# (`scripts/fhe_projection.py`, commands in docs/fhe.md): for each number of principal components k the client
# keeps, the test accuracy of the encrypted trainer's numpy twin (the encrypted run reaches it up to CKKS noise),
# logistic regression on the same k components and on all 768 features, and the seconds one encrypted iteration
# takes at width k (`benchmarks/bench_fhe.py`, batch 1024, 2 cores).

# %%
from encvit.common.shipped import SHIPPED_FHE_RUNS

projection = SHIPPED_FHE_RUNS / "projection-tokens768.csv"
display(pd.read_csv(projection).round(2))
plt.imshow(plt.imread(projection.with_suffix(".png")))
plt.axis("off")

# %% [markdown]
# ## 9 · The server in a process of its own, over HTTP
#
# So far the server was an object in this notebook's process. `encvit fhe-serve` runs it on its own, on this or
# another machine: it stores only a hash of each client's token, keeps every job on its disk (a restart loses at
# most one step) and refuses an upload that holds a secret key. The client sends the very messages of sections 2-5
# through another transport (`encvit.fhe.remote.Http` instead of the in-memory one): the protocol does not change.
# The cell starts a server on 127.0.0.1, makes a token, trains the head of section 5 through it and compares.

# %%
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from encvit.fhe.remote import Http
from encvit.fhe.train import train_encrypted

server_dir = Path(tempfile.mkdtemp(prefix="encvit-notebook-server-"))
serve = [sys.executable, "-m", "encvit.cli", "fhe-serve", "--data", str(server_dir)]
token = subprocess.run([*serve, "--new-token", "notebook"], capture_output=True, text=True, check=True).stdout.strip()
server = subprocess.Popen([*serve, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
url = server.stdout.readline().split()[-1]  # the server prints `serving on URL` once it listens
wire = Http(url, token)
remote = train_encrypted(features, config, progress=False, transport=wire, keep=True)
print(
    f"through {url}: test accuracy {remote.best['test_acc']:.2f}% (in this process, section 5: "
    f"{encrypted.best['test_acc']:.2f}%), best epoch {remote.best_epoch} ({encrypted.best_epoch})"
)
round_trips = {k: v for k, v in wire.http.items() if " " in k}
print(
    f"{wire.http['requests']} requests, {wire.http['bytes_up'] / 1e6:.1f} MB up, "
    f"{wire.http['bytes_down'] / 1e6:.1f} MB down; by route: {round_trips}"
)

# %% [markdown]
# What the server's disk holds for the job (kept here with `keep=True`; by default it is deleted when the client
# finishes): public keys, ciphertexts, and its own bookkeeping. Each file is tried as a TenSEAL context: none
# holds a secret key.

# %%
import tenseal

job_dir = server_dir / "jobs" / wire.job
held = pd.DataFrame(  # by what the job's folder holds: job.json, public.bin, store/, weights-N/, logits-N/
    [
        {"kind": p.relative_to(job_dir).parts[0].split("-")[0], "bytes": p.stat().st_size}
        for p in job_dir.rglob("*")
        if p.is_file()
    ]
)
display(held.groupby("kind")["bytes"].agg(files="count", MB=lambda b: b.sum() / 1e6).round(2))
private = 0
for path in server_dir.rglob("*"):
    if path.is_file():
        data = path.read_bytes()
        for candidate in (data, data[8 : 8 + int.from_bytes(data[:8], "little")]):
            try:
                private += tenseal.context_from(candidate).is_private()
            except Exception:  # ciphertexts, JSON: not a context
                pass
print(f"files on the server that load as a context with a secret key: {private}")
Http(url, token).request("DELETE", f"/jobs/{wire.job}")  # the client removes its job
server.kill()
server.wait()
shutil.rmtree(server_dir)
