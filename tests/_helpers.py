"""Small builders shared by several test files (tests/ is on sys.path under pytest)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def png_mask_folder(root: Path, masks) -> Path:
    """`root/images/c<i>.png` (flat grey) + `root/masks/c<i>.png` (16-bit when the ids need it)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(np.full(m.shape, 100, np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(m.astype(np.uint16 if m.max() > 255 else np.uint8)).save(root / "masks" / f"c{i}.png")
    return root
