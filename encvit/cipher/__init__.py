"""The block-wise cipher (`Key`) and the image files it reads and writes.

`from encvit.cipher import Key`; names load on first use, so importing this package costs nothing until then.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "key": ["Key", "PerImageKeys", "fingerprint_of", "parse_key_json"],
        "images": [
            "MAX_PIXELS",
            "as_batch",
            "colour_images",
            "is_grey",
            "load_image",
            "open_image",
            "parse_size",
            "png_bytes",
            "save_png",
            "to_array",
        ],
    },
)
