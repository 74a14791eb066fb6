"""What an eavesdropper holds of the main page's encrypted images, and what the ciphertext-only attack recovers.

This script only lays out widgets; the work is in `encvit.demo.attackers_view`. The slider and what the attack
recovers are one fragment (moving the slider reruns that part alone), and the attack waits its turn in the
server's one queue (`encvit.demo.serving`), so a class opening this page at once does not run twenty attacks at
the same time; each result is kept for the next visitor who asks for the same.
"""

import numpy as np
import streamlit as st

from encvit.attacks.datasets import REFERENCE_CLASSES
from encvit.cipher import colour_images
from encvit.common.errors import EncvitError
from encvit.data import FASHION_CLASSES
from encvit.demo import attackers_view as attack_demo
from encvit.demo import home as demo
from encvit.demo.serving import QUIET_STATUS_CSS, shared

st.set_page_config(page_title="encvit attacker's view", page_icon="🕵️", layout="wide")
st.html(QUIET_STATUS_CSS)  # no 'Running...' animation in every waiting visitor's browser
IMAGES_PER_ROW = 4


@st.cache_resource(show_spinner="Loading Fashion-MNIST: the owner's further images and the public references…")
def attack_sets():
    """The data owner's further plain images and the attacker's public reference images, loaded once."""
    return attack_demo.attack_sets()


@st.cache_resource(show_spinner=False)
def default_target():
    """The main page's starting key and images, for a visitor who opens this page first."""
    return attack_demo.default_target()


def attack(key, images, collected: int, waiting) -> attack_demo.AttackOutcome:
    """The ciphertext-only attack on the visitor's images and `collected` more ciphertexts: run in the server's
    queue, once per key, images and number collected."""
    attack_demo.check_attackable(key)  # at once, not after a wait in the queue
    owner_images, reference = attack_sets()
    batch = np.stack([image.array for image in images])
    name = ("attack", key.fingerprint, tuple(image.digest for image in images), collected)
    return shared().once(name, lambda: attack_demo.run_attack(key, batch, owner_images[:collected], reference), waiting)


def image_grid(items, columns_per_item: int):
    """Rows of columns, IMAGES_PER_ROW items to a row, `columns_per_item` columns for each item."""
    for start in range(0, len(items), IMAGES_PER_ROW):
        columns = st.columns(min(len(items), IMAGES_PER_ROW) * columns_per_item)
        for index, item in enumerate(items[start : start + IMAGES_PER_ROW]):
            yield item, columns[index * columns_per_item : (index + 1) * columns_per_item]


st.title("Attacker's view")
st.caption(
    "An eavesdropper between the data owner and whoever trains the model sees every encrypted image and "
    "knows the cipher (block size and options), as anyone can read this code. It does not know the key. "
    "How much does it get?"
)

chosen = st.session_state.get("main_page_choice")
if chosen is None:
    key, images = default_target()
    st.info(
        "Nothing was chosen on the main page yet: this page attacks the main page's defaults (the demo "
        "passphrase's key and three shipped samples). Choose a key and images on **Home** to attack those."
    )
else:
    key, images = chosen
    st.markdown(
        f"The key and images chosen on the main page: key `{key.fingerprint}`, "
        f"{len(images)} image{'s' if len(images) != 1 else ''}."
    )
if not images:
    st.info("No images are chosen on the main page: pick a shipped sample or upload an image there.")
    st.stop()
st.caption(key.describe())
batch = np.stack([image.array for image in images])

# ---- what the eavesdropper holds ---------------------------------------------------------------------
st.header("What the eavesdropper holds")
encrypted, thumbnails = attack_demo.holdings(key, batch)
size = batch.shape[1]
st.markdown(
    f"The encrypted images, and with them their **block-mean thumbnails**: shuffling the pixels inside a "
    f"{key.block_size}x{key.block_size} block keeps the block's mean, so the mean of every block of an "
    f"encrypted image is the plain image at 1/{key.block_size} of its resolution "
    f"({size // key.block_size}x{size // key.block_size}), whatever the key."
)
if "block scrambling" in attack_demo.assumed_options(key):
    st.markdown("This key scrambles the blocks too: the thumbnail's blocks stand in the scrambled order.")
if key.neg_pos is not None:
    flipped = int(key.neg_pos.sum())
    st.markdown(
        f"This key also flips {flipped} of the {key.block_length} values of a block (negative-positive, "
        f"x to 255 - x): a block's mean mixes flipped and unflipped values, so for a flat block the thumbnail "
        f"keeps {abs(key.block_length - 2 * flipped) / key.block_length:.0%} of the contrast."
    )
factor = demo.display_factor(size)
for (name, ciphertext, thumbnail), (left, right) in image_grid(
    list(zip([i.name for i in images], encrypted, thumbnails, strict=False)), 2
):
    left.image(demo.enlarge(ciphertext, factor), caption=f"{name}, encrypted")
    right.image(demo.enlarge(thumbnail, factor * key.block_size), caption="its block means")


# ---- what the attack recovers: one fragment, rerun alone when the slider moves ---------------------------
@st.fragment
def recovered(key, images, batch, factor: int) -> None:
    """The slider, the attack on the main page's images and what it recovered."""
    st.header("What the ciphertext-only attack recovers")
    st.markdown(
        "The same permutation shuffles every block, so the correlations between the positions of a block, "
        "taken over all encrypted blocks, are a shuffled copy of those of natural images. The attack matches "
        "the two (graph matching), then picks the block's orientation that makes the decrypted images "
        "smoothest. Natural images it takes from public Fashion-MNIST images of other classes ("
        + ", ".join(FASHION_CLASSES[c] for c in REFERENCE_CLASSES)
        + ") that the data owner never sent."
    )
    collected = st.slider(
        "Ciphertexts the eavesdropper has collected",
        0,
        attack_demo.COLLECTED_MAX,
        50,
        step=10,
        key="collected",
        help="More images from the same data owner (fashion5k images of T-shirts, "
        "trousers, pullovers, dresses and coats), encrypted with the same key. The attack learns "
        "from every ciphertext it holds.",
    )
    used = len(images) + collected
    waiting = st.empty()

    def wait(ahead: int) -> None:
        waiting.info(f"The server is busy: {ahead} ahead of you. The attack starts in its turn.", icon="⏳")

    try:
        with st.spinner(f"Attacking {used} encrypted images with {attack_demo.REFERENCES:,} public reference images…"):
            outcome = attack(key, images, collected, wait)
    except EncvitError as exc:
        st.error(f"The attack could not run: {demo.escape_markdown(exc)}")
        return
    finally:
        waiting.empty()

    st.markdown(
        f"The attack used **{outcome.used} encrypted images** ({outcome.from_page} from the main page and "
        f"{outcome.collected} collected) and {outcome.references:,} public reference images. It took "
        f"{outcome.seconds:.1f} s on this server."
    )
    if outcome.assumed:
        st.markdown(
            f"The key uses {' and '.join(outcome.assumed)}: the attack assumes the options the key has "
            "(they are part of the cipher, not of the key) and has to recover them as well."
        )
    right_pixel, exact = outcome.agreement["positions_same_pixel"], outcome.agreement["positions_exact"]
    metrics = st.columns(4)
    metrics[0].metric(
        "Key recovered (right pixel)",
        f"{100 * right_pixel:.0f}%",
        help="Shuffled positions sent back to the right pixel of the block, whatever the channel.",
    )
    metrics[1].metric(
        "Key recovered (exact)",
        f"{100 * exact:.0f}%",
        help="Shuffled positions sent back to the right pixel and the right channel.",
    )
    metrics[2].metric(
        "PSNR of your images",
        f"{outcome.quality['psnr_db']:.1f} dB",
        help="Mean over your images of the attacker's decryption against the original; an exact "
        "decryption counts as 100 dB.",
    )
    metrics[3].metric(
        "Your images decrypted exactly",
        f"{round(outcome.quality['images_exact'] * outcome.from_page)} of {outcome.from_page}",
    )
    colour = colour_images(batch)
    if right_pixel > exact:
        st.caption(
            "A grey image holds the same value in all three channels, so no attack can tell (nor needs to know) "
            "a value's channel: 'right pixel' decides the decryption of a grey image; of a colour image, 'exact'."
        )
    if colour:
        st.warning(
            f"{colour} of your images {'is' if colour == 1 else 'are'} in colour. The attack still runs, but its "
            "references are grey, so it cannot tell the colour channels apart: a colour image comes out with "
            "the right shapes at best and mixed-up colours, and its quality is lower.",
            icon="🎨",
        )
    if "block_order" in outcome.agreement:
        st.markdown(
            f"Block scrambling: the attack solved the jigsaw of all images at once and put "
            f"{100 * outcome.agreement['block_order']:.0f}% of the blocks in their place."
        )
        pose = outcome.pose_quality
        if pose["images_exact_any_pose"] > outcome.quality["images_exact"]:
            st.markdown(
                f"Yet turned, mirrored or shifted round as a whole (one pose for every image: "
                f"{pose['pose']}), {round(pose['images_exact_any_pose'] * outcome.from_page)} of your "
                f"{outcome.from_page} reconstructions are your images exactly: the jigsaw came out whole, only "
                "its orientation is unknown to the attack, and a viewer sees it at a glance."
            )
    if "neg_pos_mask" in outcome.agreement:
        st.markdown(f"Negative-positive: {100 * outcome.agreement['neg_pos_mask']:.0f}% of the flip mask recovered.")

    for (image, reconstruction, psnr), (left, right) in image_grid(
        list(zip(images, outcome.reconstructions, outcome.psnr_db, strict=False)), 2
    ):
        left.image(demo.enlarge(image.array, factor), caption=f"{image.name} (the attacker never sees it)")
        right.image(demo.enlarge(reconstruction, factor), caption=f"reconstructed: {attack_demo.psnr_caption(psnr)}")

    with st.expander("Scores in detail", expanded=True):
        st.table(attack_demo.key_rows(outcome))
        st.table(attack_demo.quality_rows(outcome))
        st.caption(
            "PSNR and SSIM from scikit-image; an exact decryption counts as 100 dB. The last row scores the "
            "ciphertexts themselves as if they were decryptions: where an attacker starts from. "
            "Recovered key: " + outcome.recovered.describe()
        )


recovered(key, images, batch, factor)
