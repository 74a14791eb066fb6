"""What the key hides: leaks by construction and key-recovery attacks on the block-wise cipher.

Every attack returns an ordinary `encvit.cipher.Key`, so a recovered key is a key file that `encvit decrypt`
uses. The attacks use only the cipher's public API; they never look inside a key they attack.
"""
from .adapter_leak import key_from_adapter, key_from_weights
from .ciphertext_only import (block_symmetries, boundary_roughness, channel_orders, ciphertext_only,
                              match_correlations, position_correlations)
from .leaks import block_histograms, block_mean_thumbnail, key_space_bits
from .plaintext import chosen_plaintext, known_plaintext, make_probes
from .scores import best_pose_quality, decryption_quality, image_poses, key_agreement, plain_model_accuracy

__all__ = ["best_pose_quality", "block_histograms", "block_mean_thumbnail", "block_symmetries", "boundary_roughness",
           "channel_orders", "chosen_plaintext", "ciphertext_only", "decryption_quality", "image_poses",
           "key_agreement", "key_from_adapter", "key_from_weights", "key_space_bits", "known_plaintext",
           "make_probes", "match_correlations", "plain_model_accuracy", "position_correlations"]
