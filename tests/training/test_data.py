"""Training data from an ImageFolder tree (the ImageNet layout), as stage 1 and stage 2 read it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import build_dataset, center_crop_arr


def _tree(root, sizes):
    """root/train/<class>/<i>.png with images of the given (w, h) sizes; class 'b' images are white, 'a' black."""
    for cls, value in (("a", 0), ("b", 255)):
        d = root / "train" / cls
        d.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            mode = "L" if i % 2 else "RGBA"  # other modes are converted to RGB
            Image.new(mode, (w, h), value if mode == "L" else (value, value, value, 255)).save(d / f"{i}.png")


def test_image_folder_gives_square_images_in_minus_one_one_with_class_indices(tmp_path):
    _tree(tmp_path, [(80, 40), (33, 90), (32, 32)])
    ds = build_dataset(tmp_path, image_size=32, split="train")
    assert len(ds) == 6 and ds.classes == ["a", "b"]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        want = -1.0 if y == 0 else 1.0  # black -> -1, white -> +1
        assert torch.allclose(x, torch.full_like(x, want), atol=1e-6)


def test_center_crop_matches_the_adm_rule_on_a_gradient():
    # 128 x 64 horizontal gradient (value = column): the short side 64 >= 2*32, so it is BOX-halved to 64 x 32; the
    # short side is then the target, and the centre 32 columns of 64 are original columns 32..95.
    arr = np.tile(np.arange(128, dtype=np.uint8)[None, :], (64, 1))
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 32))
    assert out.shape == (32, 32)
    assert 31 <= out[:, 0].mean() <= 35 and 93 <= out[:, -1].mean() <= 97


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageFolder root not found"):
        build_dataset(tmp_path / "nope", image_size=32)
