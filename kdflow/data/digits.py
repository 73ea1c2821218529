"""scikit-learn's bundled handwritten digits, written out as an image folder.

The embedded default runs the real ingest path on them: 1,797 8x8 greyscale images in 10 classes,
shipped inside scikit-learn, so no download is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_digits(root: str | Path) -> Path:
    """Write ``root/<digit>/<index>.png``; skipped when a complete copy is already there."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    marker = root.parent / f"{root.name}.complete"  # beside, not inside: it is no image
    if marker.is_file():
        return root
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(img * (255.0 / 16.0), 0, 255).round().astype(np.uint8)  # values are 0..16
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    root.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{len(digits.images)} images\n")
    return root
