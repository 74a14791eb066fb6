"""encvit: privacy-preserving fine-tuning of Vision Transformers on block-wise encrypted images."""

__version__ = "0.1.0"
