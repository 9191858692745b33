"""Training data: MNIST from an ``.npz`` file (the demo) and ImageFolder trees (the ImageNet layout).

Every dataset yields ``(image, label)`` with ``image`` a float32 tensor ``(3, H, W)`` in [-1, 1] and ``label`` an
int64 class index, which is what ``SVGAutoencoder.encode`` expects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

MNIST_SIZE = 32  # 28x28 digits padded by 2 pixels per side, so a patch-4 encoder sees an 8x8 token grid


def load_mnist(path: str | Path, split: str = "train") -> TensorDataset:
    """MNIST as a tensor dataset: images ``(N, 3, 32, 32)`` float32 in [-1, 1] (zero-padded 28 -> 32, grey
    replicated to 3 channels), labels ``(N,)`` int64 in [0, 9].

    Reads the ``train_images``/``train_labels``/``test_images``/``test_labels`` arrays of the npz file.
    Raises ``FileNotFoundError`` when ``path`` is missing and ``ValueError`` for an unknown ``split``.
    """
    path = Path(path)
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not supported; allowed: 'train', 'test'")
    if not path.is_file():
        raise FileNotFoundError(f"MNIST file not found: {path} (pass --data /path/to/mnist.npz)")
    with np.load(path) as arrays:
        images = torch.from_numpy(arrays[f"{split}_images"].astype(np.float32))
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    pad = (MNIST_SIZE - images.shape[-1]) // 2
    images = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # background is 0 = black
    images = (images / 127.5 - 1.0).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return TensorDataset(images, labels)


def center_crop_arr(pil_image, image_size: int):
    """ADM centre crop (reference behaviour, svg_reference.md §2.3): BOX-halve while the short side is at least
    twice the target, BICUBIC-resize the short side to ``image_size``, then centre-crop a square."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def image_folder(root: str | Path, image_size: int, hflip: bool = True) -> Dataset:
    """An ImageFolder tree (``root/<class>/<image>``, the ImageNet layout) as ``(3, S, S)`` float32 in [-1, 1]
    with the ADM centre crop and an optional random horizontal flip (stage-2 data, reference §2.3).

    Raises ``FileNotFoundError`` when ``root`` is not a directory.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root not found: {root}")
    steps = [transforms.Lambda(lambda im: center_crop_arr(im.convert("RGB"), image_size))]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    return datasets.ImageFolder(str(root), transform=transforms.Compose(steps))


def build_dataset(data: str | Path, image_size: int, split: str = "train") -> Dataset:
    """Dispatch on the path: a ``.npz`` file is MNIST (``image_size`` must be 32), a directory is an ImageFolder
    tree (``split`` names a subdirectory when it exists, e.g. ``train``/``val``)."""
    data = Path(data)
    if data.suffix == ".npz":
        if image_size != MNIST_SIZE:
            raise ValueError(f"image_size={image_size} does not fit MNIST; allowed: {MNIST_SIZE}")
        return load_mnist(data, split)
    sub = data / split
    return image_folder(sub if sub.is_dir() else data, image_size, hflip=(split == "train"))
