"""Write the shipped sample images (encvit/samples/): Fashion-MNIST and MNIST test images, the colour versions of
the Fashion-MNIST ones (cfashion5k, encvit.data.colour) and two photographs.

Run once; the outputs are committed. Photographs come from scikit-image's data module (public domain / CC0).
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from encvit.data.datasets import load_dataset

OUT = Path(__file__).resolve().parents[1] / "encvit" / "samples"
OUT.mkdir(parents=True, exist_ok=True)
labels = {}
for dataset, prefix in (("fashion5k", "fashion"), ("mnist5k", "digit"), ("cfashion5k", "cfashion")):
    test = load_dataset(dataset).test
    for c, name in enumerate(test.classes):
        index = int(np.flatnonzero(test.labels.numpy() == c)[0])  # cfashion-c.png is fashion-c.png in colour
        file = f"{prefix}-{c}.png"
        Image.fromarray(test.images[index].permute(1, 2, 0).squeeze(-1).numpy()).save(OUT / file)
        labels[file] = {"dataset": dataset, "label": name}
for name in ("chelsea", "coffee"):
    image = Image.fromarray(getattr(skdata, name)()).resize((224, 224), Image.Resampling.BILINEAR)
    image.save(OUT / f"{name}.png")
    labels[f"{name}.png"] = {"dataset": "scikit-image", "label": None}
(OUT / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
print(f"wrote {len(labels)} samples to {OUT}")
