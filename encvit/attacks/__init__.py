"""What the key hides: leaks by construction and key-recovery attacks on the block-wise cipher.

Every attack returns an ordinary `encvit.cipher.Key`, so a recovered key is a key file that `encvit decrypt`
uses. The attacks use only the cipher's public API; they never look inside a key they attack. Names load on first
use, so `encvit attack --help` loads no model code.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "adapter_leak": ["key_from_adapter", "key_from_weights"],
        "ciphertext": [
            "block_symmetries",
            "boundary_roughness",
            "channel_orders",
            "ciphertext_only",
            "match_correlations",
            "position_correlations",
        ],
        "leaks": ["block_histograms", "block_mean_thumbnail", "key_space_bits"],
        "plaintext": ["chosen_plaintext", "known_plaintext", "make_probes"],
        "scores": ["best_pose_quality", "decryption_quality", "image_poses", "key_agreement", "plain_model_accuracy"],
    },
)
