"""The encvit demo: encrypt images with a key and classify them with adapters trained on encrypted images.

Run with `streamlit run app/Home.py`. This script only lays out widgets; the work is in `encvit.demo`.
"""

from pathlib import Path

import streamlit as st
import torch

from encvit.cipher import Key
from encvit.common.errors import EncvitError
from encvit.common.shipped import DEMO_PASSPHRASE, list_samples
from encvit.demo import home as demo
from encvit.demo.access import app_access
from encvit.models import load_runs, shipped_comparison

st.set_page_config(page_title="encvit demo", page_icon="🔐", layout="wide")
# A few images through a small ViT: a second thread saves little, and on a busy machine its synchronisation
# made one page run 70x slower (5 s instead of 0.07 s on 2 cores under load).
torch.set_num_threads(1)


@st.cache_resource(show_spinner="Loading the backbone and adapters…", max_entries=4)
def cached_runs(folder: str, stamp: tuple):
    """Every run below `folder` as (model, adapter info): loaded once, and again when an adapter file changes.
    Only called once the folder and every adapter's backbone were allowed."""
    return load_runs(folder)


def show_error(exc: Exception) -> None:
    """An error's one line, shown as written (file names and formulas are not Markdown)."""
    st.error(demo.escape_markdown(exc))


@st.cache_resource(show_spinner=False, max_entries=16)
def passphrase_key(passphrase: str, block_size: int, channels: int) -> Key:
    """The key of a passphrase (scrypt takes a moment, so each one is derived once)."""
    return Key.generate(block_size, channels, passphrase=passphrase)


st.title("Classifying encrypted images")
st.caption(
    "An image is encrypted block by block with a secret key; ViTs fine-tuned on images encrypted with that "
    "key classify it without seeing the plain image. Try another key and watch the predictions go wrong."
)

# ---- adapters ----------------------------------------------------------------------------------------
sidebar = st.sidebar
sidebar.header("Adapters")
source = sidebar.radio("Runs", ["Shipped comparison (fashion5k)", "Run directories in a folder"], key="runs_source")
folder = str(shipped_comparison())
try:
    access = app_access()
except EncvitError as exc:
    show_error(exc)
    st.stop()
if source != "Shipped comparison (fashion5k)":
    folder = sidebar.text_input(
        "Folder holding run directories",
        key="runs_folder",
        placeholder="e.g. runs/compare-fashion",
        help=f"This app reads only these folders and those inside them: {demo.escape_markdown(access.describe())}.",
    )
    if not folder:
        st.info("Name a folder holding run directories (each with adapter.safetensors) in the sidebar.")
        st.stop()
try:
    found = access.runs(folder)
    if not found:
        raise EncvitError(f"{folder} holds no run directories (no adapter.safetensors below it)")
    access.check_backbones(found)  # from the adapters' headers, before any backbone is built
    stamp = tuple((name, (run / "adapter.safetensors").stat().st_mtime_ns) for name, run in found.items())
    models = cached_runs(str(Path(folder).resolve()), stamp)
except (EncvitError, OSError) as exc:
    show_error(exc)
    st.stop()

infos = {name: info for name, (_, info) in models.items()}
if st.session_state.get("runs_of") != folder or "runs" not in st.session_state:
    # Another folder (or back from the other page): start from its default runs, not from an empty choice.
    st.session_state.runs, st.session_state.runs_of = demo.default_runs(infos), folder
chosen = sidebar.multiselect(
    "Runs to compare",
    sorted(infos),
    key="runs",
    help="Encrypted runs see the encrypted image, plain runs the plain one.",
)
chosen_models = {name: models[name] for name in chosen}
try:
    shape = demo.geometry({name: infos[name] for name in chosen} or infos)
except EncvitError as exc:
    show_error(exc)
    st.stop()

# ---- key ---------------------------------------------------------------------------------------------
sidebar.header("Key")
key_source = sidebar.radio("Key from", ["Passphrase", "Key file", "New random key"], key="key_source")
key = None
if key_source == "Passphrase":
    passphrase = sidebar.text_input(
        "Passphrase",
        value=DEMO_PASSPHRASE,
        key="passphrase",
        help=f"The shipped encrypted adapters were trained with {DEMO_PASSPHRASE!r}.",
    )
    if passphrase:
        key = passphrase_key(passphrase, shape.patch_size, shape.channels)
    else:
        sidebar.warning("Type a passphrase.")
elif key_source == "Key file":
    upload = sidebar.file_uploader("Key file (JSON)", type=["json"], key="key_file")
    if upload is not None:
        try:
            key = demo.key_from_bytes(upload.getvalue(), upload.name)
        except EncvitError as exc:
            show_error(exc)
else:
    another = sidebar.button("Generate another", key="new_random_key")
    if another or "random_key" not in st.session_state:
        st.session_state.random_key = Key.generate(shape.patch_size, shape.channels)
    key = st.session_state.random_key
if key is None:
    st.info("Choose a key in the sidebar: a passphrase, a key file or a new random key.")
    st.stop()
sidebar.markdown(f"Fingerprint: `{key.fingerprint}`")
sidebar.caption(demo.escape_markdown(key.describe()))
try:
    demo.check_key(key, shape)
except EncvitError as exc:
    show_error(exc)
    st.stop()
grid = sidebar.checkbox("Show the block grid", value=False, key="grid")

# ---- images ------------------------------------------------------------------------------------------
st.header("Images")
samples = {s.path.name + (f" ({s.label})" if s.label else ""): s for s in list_samples()}
picked = st.multiselect(
    "Shipped samples",
    list(samples),
    key="samples",
    default=[n for n, s in samples.items() if s.label in shape.class_names][:3],
    help="cfashion-N.png is fashion-N.png in colour, as in the dataset cfashion5k.",
)
uploads = st.file_uploader(
    "Or upload PNG / JPEG images", type=["png", "jpg", "jpeg"], accept_multiple_files=True, key="uploads"
)
images = demo.sample_images([samples[n] for n in picked], shape)
uploaded, errors = demo.read_uploads(((u.name, u.getvalue()) for u in uploads or []), shape)
for message in errors:
    st.error(demo.escape_markdown(message))
images += uploaded
st.session_state.main_page_choice = (key, images)  # what the Attacker's view page attacks
if not images:
    st.info("Pick a shipped sample or upload an image.")
    st.stop()

mismatch = demo.key_mismatch({name: infos[name] for name in chosen}, key)
if mismatch:
    st.warning(demo.escape_markdown(mismatch), icon="⚠️")

name, data, mime = demo.encrypted_download(images, key)
key_name, key_data = demo.key_download(key)
left, right, _ = st.columns([2, 1, 2])
left.download_button(
    "Download encrypted " + ("image" if len(images) == 1 else f"images (zip of {len(images)})"),
    data,
    file_name=name,
    mime=mime,
    key="download_images",
    on_click="ignore",
)
right.download_button(
    "Download key file", key_data, file_name=key_name, mime="application/json", key="download_key", on_click="ignore"
)

# ---- predictions -------------------------------------------------------------------------------------
predictions = demo.classify(chosen_models, images, key)
factor = demo.display_factor(shape.image_size)
st.header("Predictions")
st.caption(
    f"Models take {shape.image_size}x{shape.image_size} images; the key permutes every "
    f"{key.block_size}x{key.block_size} block. Shown enlarged {factor}x (nearest neighbour)."
)
for index, image in enumerate(images):
    with st.container(border=True):
        original, encrypted, table = st.columns([1, 1, 3])
        # PNG, not Streamlit's default JPEG, whose colour subsampling would blur a block's pixels into each other
        original.image(
            demo.enlarge(image.array, factor, key.block_size if grid else None), caption=image.name, output_format="PNG"
        )
        encrypted.image(
            demo.enlarge(key.encrypt(image.array), factor, key.block_size if grid else None),
            caption=f"encrypted with {key.fingerprint}",
            output_format="PNG",
        )
        if image.label:
            table.markdown(f"True label: **{demo.escape_markdown(image.label)}**")
        note = demo.grey_runs_note(image, {name: infos[name] for name in chosen})
        if note:
            table.caption(demo.escape_markdown(note))
        if predictions:
            table.table(demo.prediction_table(predictions, infos, index, image.label))
        else:
            table.info("Choose runs to compare in the sidebar.")
