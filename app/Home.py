"""The encvit demo: encrypt images with a key and classify them with adapters trained on encrypted images.

Run with `streamlit run app/Home.py`. This script only lays out widgets; the work is in `encvit.demo`.

Everything a visitor changes (key, images, runs, grid) sits in one fragment, so a change reruns that part alone.
That also keeps uploads: a whole-page rerun that starts while the browser still waits for Streamlit's answer to an
upload (where to send the file) drops that answer and the file with it, and pressing Enter in the passphrase box
right after choosing a file did just that. A form would not help: Enter submits a form before the file is there.
"""

from pathlib import Path

import streamlit as st
import torch

from encvit.cipher import Key
from encvit.common.errors import EncvitError
from encvit.common.shipped import DEMO_PASSPHRASE, list_samples
from encvit.demo import home as demo
from encvit.demo.access import adapter_stamp, app_access
from encvit.demo.card import CARD_CSS, image_card
from encvit.demo.serving import QUIET_STATUS_CSS, adapter_digest, freeze_heap, inference_threads, shared
from encvit.models import load_runs, shipped_comparison

st.set_page_config(page_title="encvit demo", page_icon="🔐", layout="wide")
st.html(QUIET_STATUS_CSS + CARD_CSS)  # no 'Running...' animation in waiting browsers; the image cards' style
torch.set_num_threads(inference_threads())
SHIPPED = "Shipped comparison (fashion5k)"


@st.cache_resource(show_spinner="Loading the backbone and adapters…", max_entries=4)
def cached_runs(folder: str, stamp: tuple):
    """Every run below `folder` as (model, adapter info): loaded once, and again when an adapter file changes.
    Only called once the folder and every adapter's backbone were allowed."""
    models = load_runs(folder)
    freeze_heap()  # the models live as long as the server: out of the way of the collection after every page run
    return models


@st.cache_data(show_spinner=False, max_entries=32)
def checked_adapters(_access, stamp: tuple, backbones: frozenset) -> dict[str, str]:
    """Each run's adapter hash, once its backbone (read from the file's header) was allowed: once per file change."""
    runs = {name: Path(path) for name, path, *_ in stamp}
    _access.check_backbones(runs)
    return {name: adapter_digest(run / "adapter.safetensors") for name, run in runs.items()}


@st.cache_data(show_spinner=False, max_entries=64)
def samples_at(names: tuple[str, ...], shape: demo.Geometry) -> list[demo.DemoImage]:
    """Shipped samples at the models' input size, read and decoded once."""
    samples = {s.path.name: s for s in list_samples()}
    return demo.sample_images([samples[name] for name in names], shape)


@st.cache_data(show_spinner=False, max_entries=256)
def read_upload(file_id: str, name: str, _data: bytes, shape: demo.Geometry):
    """An upload decoded at the models' input size, once per upload: (image, None) or (None, message)."""
    return demo.read_upload(_data, name, shape)


@st.cache_data(show_spinner=False, max_entries=1024)
def shown_png(digest: str, fingerprint: str | None, grid: int | None, factor: int, _image, _key) -> bytes:
    """The enlarged PNG of an image (encrypted when a key is given), drawn once per image, key and grid."""
    return demo.shown_png(_image, factor, _key, grid)


def show_error(exc: Exception, where=st) -> None:
    """An error's one line, shown as written (file names and formulas are not Markdown)."""
    where.error(demo.escape_markdown(exc))


st.title("Classifying encrypted images")
st.caption(
    "An image is encrypted block by block with a secret key; ViTs fine-tuned on images encrypted with that "
    "key classify it without seeing the plain image. Try another key and watch the predictions go wrong."
)

# ---- adapters: the operator's choice, for the whole page ----------------------------------------------
sidebar = st.sidebar
sidebar.header("Adapters")
source = sidebar.radio("Runs", [SHIPPED, "Run directories in a folder"], key="runs_source")
folder = str(shipped_comparison())
try:
    access = app_access()
except EncvitError as exc:
    show_error(exc)
    st.stop()
if source != SHIPPED:
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
    stamp = adapter_stamp(found)
    adapters = checked_adapters(access, stamp, access.backbones)  # before any backbone is built
    models = cached_runs(str(Path(folder).resolve()), stamp)
except (EncvitError, OSError) as exc:
    show_error(exc)
    st.stop()


# ---- what a visitor changes: one fragment -------------------------------------------------------------
@st.fragment
def visitor(models: dict, adapters: dict[str, str], folder: str) -> None:
    """Key, images, runs and grid, and what they give: rerun alone when one of them changes."""
    serving = shared()
    infos = {name: info for name, (_, info) in models.items()}
    key_box, images_box = st.columns(2, gap="large")
    options_box = st.container()
    waiting = st.empty()

    def wait(ahead: int) -> None:
        waiting.info(f"The server is busy: {ahead} ahead of you. Your turn comes in a moment.", icon="⏳")

    # runs and display
    if st.session_state.get("runs_of") != folder or "runs" not in st.session_state:
        # Another folder (or back from another page): start from its default runs, not from an empty choice.
        st.session_state.runs, st.session_state.runs_of = demo.default_runs(infos), folder
    runs_column, grid_column = options_box.columns([4, 1], vertical_alignment="bottom")
    chosen = runs_column.multiselect(
        "Runs to compare",
        sorted(infos),
        key="runs",
        help="Encrypted runs see the encrypted image, plain runs the plain one.",
    )
    grid = grid_column.checkbox("Show the block grid", value=False, key="grid")
    chosen_infos = {name: infos[name] for name in chosen}
    try:
        shape = demo.geometry(chosen_infos or infos)
    except EncvitError as exc:
        show_error(exc)
        return

    # key
    key_box.subheader("Key")
    key_choices = ["Passphrase", "Key file", "New random key"]
    key_source = key_box.radio("Key from", key_choices, key="key_source", horizontal=True)
    key = None
    if key_source == "Passphrase":
        passphrase = key_box.text_input(
            "Passphrase",
            value=DEMO_PASSPHRASE,
            key="passphrase",
            help=f"The shipped encrypted adapters were trained with {DEMO_PASSPHRASE!r}. Press Enter to use another.",
        )
        if passphrase:
            key = serving.key(passphrase, shape.patch_size, shape.channels, wait)
            waiting.empty()
        else:
            key_box.warning("Type a passphrase.")
    elif key_source == "Key file":
        upload = key_box.file_uploader("Key file (JSON)", type=["json"], key="key_file")
        if upload is not None:
            try:
                key = demo.key_from_bytes(upload.getvalue(), upload.name)
            except EncvitError as exc:
                show_error(exc, key_box)
    else:
        another = key_box.button("Generate another", key="new_random_key")
        if another or "random_key" not in st.session_state:
            st.session_state.random_key = Key.generate(shape.patch_size, shape.channels)
        key = st.session_state.random_key
    if key is None:
        st.info("Choose a key above: a passphrase, a key file or a new random key.")
        return
    key_box.markdown(f"Fingerprint: `{key.fingerprint}`")
    key_box.caption(demo.escape_markdown(key.describe()))
    try:
        demo.check_key(key, shape)
    except EncvitError as exc:
        show_error(exc)
        return

    # images
    images_box.subheader("Images")
    samples = {s.path.name + (f" ({s.label})" if s.label else ""): s for s in list_samples()}
    picked = images_box.multiselect(
        "Shipped samples",
        list(samples),
        key="samples",
        default=[n for n, s in samples.items() if s.label in shape.class_names][:3],
        help="cfashion-N.png is fashion-N.png in colour, as in the dataset cfashion5k.",
    )
    uploads = images_box.file_uploader(
        "Or upload PNG / JPEG images",
        type=["png", "jpg", "jpeg"],
        accept_multiple_files=True,
        key="uploads",
        help="Each file is listed here once it has arrived; its predictions follow below.",
    )
    images = samples_at(tuple(samples[n].path.name for n in picked), shape)
    for upload in uploads or []:
        image, error = read_upload(upload.file_id, upload.name, upload.getvalue(), shape)
        if error:
            st.error(demo.escape_markdown(error))
        else:
            images.append(image)
    st.session_state.main_page_choice = (key, images)  # what the Attacker's view page attacks
    if not images:
        st.info("Pick a shipped sample or upload an image.")
        return

    mismatch = demo.key_mismatch(chosen_infos, key)
    if mismatch:
        st.warning(demo.escape_markdown(mismatch), icon="⚠️")
    name, mime = demo.download_name(images, key)
    key_name, key_data = demo.key_download(key)
    left, right, _ = st.columns([2, 1, 2])
    left.download_button(
        "Download encrypted " + ("image" if len(images) == 1 else f"images (zip of {len(images)})"),
        lambda: demo.encrypted_download(images, key)[1],  # made only when asked for
        file_name=name,
        mime=mime,
        key="download_images",
        on_click="ignore",
    )
    right.download_button(
        "Download key file",
        key_data,
        file_name=key_name,
        mime="application/json",
        key="download_key",
        on_click="ignore",
    )

    # predictions
    chosen_models = {name: models[name] for name in chosen}
    predictions = serving.classify(chosen_models, adapters, images, key, waiting=wait)
    waiting.empty()
    factor = demo.display_factor(shape.image_size)
    block = key.block_size if grid else None
    st.header("Predictions")
    st.caption(
        f"Models take {shape.image_size}x{shape.image_size} images; the key permutes every "
        f"{key.block_size}x{key.block_size} block. Shown enlarged {factor}x (nearest neighbour)."
    )
    if not predictions:
        st.info("Choose runs to compare above.")
    for index, image in enumerate(images):
        st.html(  # one element per image, not ten: see encvit.demo.card
            image_card(
                image.name,
                shown_png(image.digest, None, block, factor, image, None),
                shown_png(image.digest, key.fingerprint, block, factor, image, key),
                key.fingerprint,
                label=image.label,
                note=demo.grey_runs_note(image, chosen_infos),
                table=demo.prediction_table(predictions, infos, index, image.label) if predictions else None,
            )
        )


visitor(models, adapters, folder)
