"""The attacks recover keys they were never shown: ciphertext-only at M = 4 on grey Fashion-MNIST, known- and
chosen-plaintext at M = 16 in colour with every cipher option; leaks and scores against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from skimage import data
from torchvision.transforms.v2 import functional as TF

from encvit.attacks import (
    best_pose_quality,
    block_mean_thumbnail,
    chosen_plaintext,
    ciphertext_only,
    decryption_quality,
    image_poses,
    key_agreement,
    key_space_bits,
    known_plaintext,
    make_probes,
    plain_model_accuracy,
)
from encvit.attacks.blocks import apply_to_blocks, to_blocks
from encvit.attacks.jigsaw import edge_dissimilarities, solve_jigsaw
from encvit.cipher.key import Key
from encvit.common.errors import AttackError, ImageError
from encvit.data.datasets import _fashion_arrays


def fashion_32(classes, count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test images of `classes` as the backbone sees them: 32 x 32, grey repeated to 3 channels."""
    images, labels = _fashion_arrays("test")
    index = np.flatnonzero(np.isin(labels, classes))[offset : offset + count]
    resized = TF.resize(torch.from_numpy(images[index][:, None].copy()), [32, 32], antialias=True)
    return np.repeat(resized.permute(0, 2, 3, 1).numpy(), 3, axis=3), labels[index]


@pytest.fixture(scope="module")
def garments():
    """Encrypted-side images (tops, trousers, pullovers, dresses, coats) and reference images of other classes."""
    return fashion_32([0, 1, 2, 3, 4], 60)[0], fashion_32([5, 6, 7, 8, 9], 300)[0]


PHOTO = data.astronaut()  # 512 x 512 x 3, from scikit-image's package data
OTHER_PHOTO = data.coffee()[:400, :592]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ciphertext_only_recovers_random_keys_at_m4_on_grey_images(garments, seed):
    encrypted_side, reference = garments
    key = Key.generate(4, 3)  # the OS's randomness: a key the attack has never seen
    encrypted = key.encrypt(encrypted_side)
    recovered = ciphertext_only(encrypted, list(reference), 4, seed=seed)
    assert key_agreement(key, recovered)["positions_same_pixel"] == 1.0
    assert (recovered.decrypt(encrypted) == encrypted_side).all()


def test_ciphertext_only_undoes_negative_positive_flips(garments):
    encrypted_side, reference = garments
    key = Key.generate(4, 3, neg_pos=True)
    encrypted = key.encrypt(encrypted_side)
    recovered = ciphertext_only(encrypted, list(reference), 4, neg_pos=True)
    assert key_agreement(key, recovered)["neg_pos_mask"] == 1.0
    assert decryption_quality(encrypted_side, recovered.decrypt(encrypted))["images_exact"] == 1.0


def test_ciphertext_only_refuses_what_it_cannot_attack(garments):
    encrypted_side, reference = garments
    with pytest.raises(AttackError, match="reference"):
        ciphertext_only(encrypted_side, [], 4)
    with pytest.raises(ImageError, match="multiple of the block size 5"):
        ciphertext_only(encrypted_side, list(reference), 5)


@pytest.mark.parametrize("neg_pos", [False, True], ids=["scramble", "both"])
def test_ciphertext_only_with_scrambling_gets_every_grey_image_up_to_one_pose(neg_pos):
    # 200 images: with 60 the jigsaw of the garments' blank margins has more than one solution.
    victims = fashion_32([0, 1, 2, 3, 4], 200)[0]
    reference = fashion_32([5, 6, 7, 8, 9], 300)[0]
    key = Key.generate(4, 3, scramble=True, neg_pos=neg_pos)
    encrypted = key.encrypt(victims)
    decrypted = ciphertext_only(encrypted, list(reference), 4, neg_pos=neg_pos, scramble=True).decrypt(encrypted)
    assert best_pose_quality(victims, decrypted, 4)["images_exact_any_pose"] >= 0.95


def test_poses_and_the_best_pose_score_by_hand():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    poses = dict(image_poses(images, 4))
    assert len(poses) == 8 * 4 and len(dict(image_poses(images[:, :, :4], 4))) == 4 * 2
    assert np.array_equal(poses["rot90+mirror+shift(4,0)"][0], np.roll(np.rot90(images[0])[:, ::-1], 4, axis=0))
    moved = np.roll(np.rot90(images, 1, axes=(1, 2)), 4, axis=2)
    score = best_pose_quality(images, moved, 4)
    assert score == {"images_exact_any_pose": 1.0, "psnr_db_any_pose": 100.0, "pose": "rot90+shift(0,4)"}
    wrong = moved.copy()
    off = int(wrong[0, 0, 0, 0]) or 255
    wrong[0, 0, 0, 0] = 0 if wrong[0, 0, 0, 0] else 255  # one value off in one of 3 images: MSE off^2 / 64
    score = best_pose_quality(images, wrong, 4)
    assert score["images_exact_any_pose"] == pytest.approx(2 / 3)
    assert score["psnr_db_any_pose"] == pytest.approx((200 + 10 * math.log10(255**2 * 64 / off**2)) / 3)


def test_jigsaw_puts_scrambled_blocks_of_a_photograph_back():
    key = Key.generate(16, 3, scramble=True)
    image = data.chelsea()[:288, :448]
    encrypted = key.encrypt(image)
    blocks = apply_to_blocks(to_blocks([encrypted], 16).astype(np.int64), key.pixel_permutation)
    grid = (288 // 16, 448 // 16)
    order, _ = solve_jigsaw(*edge_dissimilarities(blocks, grid, 16, 3), grid)
    assert np.mean(order == key.block_permutation(*grid)) >= 0.9


@pytest.mark.parametrize(
    "options",
    [{}, {"neg_pos": True}, {"scramble": True}, {"neg_pos": True, "scramble": True}],
    ids=["shuffle", "neg-pos", "scramble", "both"],
)
def test_known_plaintext_from_one_photograph_at_m16(options):
    key = Key.generate(16, 3, **options)
    report = {}
    recovered = known_plaintext([PHOTO], [key.encrypt(PHOTO)], report=report)
    assert report["block_size"] == 16 and report["tied_positions"] == 0
    assert key_agreement(key, recovered, (32, 32))["positions_exact"] == 1.0
    if "scramble" not in options:  # the block order of another grid size is not in one 512 x 512 pair
        assert recovered == key
        assert (recovered.decrypt(key.encrypt(OTHER_PHOTO)) == OTHER_PHOTO).all()
    else:  # blocks identical in the photograph (its black background) may trade places: no attack can tell
        agreement = np.mean(recovered.block_permutation(32, 32) == key.block_permutation(32, 32))
        assert agreement >= 1 - report["tied_blocks"] / 1024 and report["tied_blocks"] < 100
        assert (recovered.decrypt(key.encrypt(PHOTO)) == PHOTO).all()


@pytest.mark.parametrize("seed", range(3))
def test_known_plaintext_at_m4_on_grey_images(garments, seed):
    encrypted_side, _ = garments
    key = Key.generate(4, 3, passphrase=f"grey {seed}")
    report = {}
    recovered = known_plaintext(list(encrypted_side[:2]), list(key.encrypt(encrypted_side[:2])), report=report)
    assert report["tied_positions"] == 48  # the three channels of each grey pixel: no attack can tell them apart
    assert (recovered.decrypt(key.encrypt(encrypted_side)) == encrypted_side).all()


def test_known_plaintext_refuses_pairs_no_key_explains():
    with pytest.raises(AttackError, match="no block-wise key"):
        known_plaintext([PHOTO[:64, :64]], [data.astronaut()[64:128, :64]])
    with pytest.raises(ImageError, match="pair 0"):
        known_plaintext([PHOTO], [PHOTO[:256]])


@pytest.mark.parametrize(
    "options",
    [{}, {"neg_pos": True}, {"scramble": True}, {"neg_pos": True, "scramble": True}],
    ids=["shuffle", "neg-pos", "scramble", "both"],
)
@pytest.mark.parametrize("block_size", [4, 16])
def test_chosen_plaintext_recovers_the_whole_key(block_size, options):
    key = Key.generate(block_size, 3, **options)
    probes = make_probes(block_size, 3, size=(256, 256))
    recovered = chosen_plaintext([key.encrypt(p) for p in reversed(probes)])  # order does not matter
    assert key_agreement(key, recovered, (256 // block_size,) * 2) == pytest.approx(
        {
            "positions_exact": 1.0,
            "positions_same_pixel": 1.0,
            **({"neg_pos_mask": 1.0} if "neg_pos" in options else {}),
            "block_order": 1.0,
        }
    )
    assert (recovered.decrypt(key.encrypt(PHOTO[:256, :256])) == PHOTO[:256, :256]).all()


def test_chosen_plaintext_probes_cover_the_largest_blocks_and_refuse_more():
    key = Key.generate(128, 3)  # 49,152 values: needs both bytes of every index
    recovered = chosen_plaintext([key.encrypt(p) for p in make_probes(128, 3)])
    assert (recovered.pixel_permutation == key.pixel_permutation).all()
    with pytest.raises(AttackError, match="65,536"):
        make_probes(256, 3)
    with pytest.raises(AttackError, match="probe"):
        chosen_plaintext([PHOTO[:32, :64], PHOTO[32:64, :64]])


def test_block_mean_thumbnail_and_key_space_by_hand():
    image = np.zeros((4, 8, 1), dtype=np.uint8)
    image[:2, :2] = 4  # one quarter of the first 4 x 4 block is 4: its mean is 1
    image[:, 4:] = 200
    key = Key.generate(4, 1)
    assert block_mean_thumbnail(key.encrypt(image), 4).tolist() == [[1.0, 200.0]]
    bits = key_space_bits(4, 3, grid=(8, 8), scramble=True, neg_pos=True)
    assert bits["pixel shuffling"] == pytest.approx(math.log2(math.factorial(48)))
    assert bits["block scrambling"] == pytest.approx(math.log2(math.factorial(64)))
    assert bits["negative-positive"] == 48
    assert bits["total"] == pytest.approx(sum(v for k, v in bits.items() if k != "total"))
    assert key_space_bits(16)["pixel shuffling"] == pytest.approx(6259.5, abs=1)  # 768! ~ 2^6259 (papers.md)


def test_scores_by_hand():
    key = Key(2, 1, np.array([1, 0, 2, 3]))
    # Two of four positions right; with one channel a pixel holds one value, so "same pixel" is "exact".
    other = Key(2, 1, np.array([1, 0, 3, 2]))
    assert key_agreement(key, other) == {"positions_exact": 0.5, "positions_same_pixel": 0.5}
    grey = Key(1, 3, np.array([1, 0, 2]))
    assert key_agreement(grey, Key(1, 3, np.array([2, 0, 1])))["positions_same_pixel"] == 1.0
    plain = np.full((1, 8, 8, 1), 100, np.uint8)
    off = plain.copy()
    off[0, 0, 0, 0] = 110  # one value off by 10: MSE = 100 / 64, PSNR = 10 log10(255^2 * 64 / 100)
    quality = decryption_quality(plain, off)
    assert quality["psnr_db"] == pytest.approx(10 * math.log10(255**2 * 64 / 100))
    assert quality["values_right"] == pytest.approx(63 / 64) and quality["images_exact"] == 0.0
    assert decryption_quality(plain, plain) == {"images_exact": 1.0, "values_right": 1.0, "psnr_db": 100.0, "ssim": 1.0}


def test_a_plain_model_reads_exact_decryptions_but_not_ciphertexts():
    images, labels = fashion_32(list(range(10)), 200, offset=1000)
    key = Key.generate(4, 3)
    plain_accuracy = plain_model_accuracy(images, labels)
    assert plain_accuracy > 75
    assert plain_model_accuracy(key.decrypt(key.encrypt(images)), labels) == plain_accuracy
    assert plain_model_accuracy(key.encrypt(images), labels) < plain_accuracy - 20
