"""A hand-set, class-sensitive checkpoint for server tests, built in about a second, and the classifier that reads it.

The tiny random checkpoint (``make-random --preset tiny``) barely depends on the label: class 1 vs 7, or guidance
1 vs 4, moves its pixels by at most one grey level, so a server that gave every image the first image's class still
passed every test. This model's output is decided by the label and the guidance scale, and readable from the PNG:

* **SiT** (preset ``tiny``, 8×8 tokens, 36 channels). Every block is the identity (adaLN-Zero gates at 0), the time
  embedding is 0, and the final layer keeps only ``LN(pos_embed)`` modulated by a per-class gate. The velocity is
  ``v(x, t, y) = A·blob_y`` on latent channel 0 for the classes 0..7 (``blob_y``: a cross through the 2×2-token
  cell ``CELLS[y]``, brightest on the cell, read out of the positional embedding by least squares), and exactly 0 for every
  other class and for the null label. So with guidance scale w the guided velocity is ``w·A·blob_y`` and the
  generated latent is ``noise + w·A·blob_y``: the class sets WHERE the bright cell is, the scale HOW bright.
* **Decoder** (preset ``tiny``). Every residual block and attention block adds 0, the upsampling convs copy, so the
  image is ``conv_out(SiLU(GroupNorm(nearest_upsample(latent channel 0))))``: grey levels follow latent channel 0
  (normalised per image), each token an 4×4-pixel square.
* The encoder (for ``/edit``) stays random; latent statistics are the identity.

``image_class(png)`` returns the cell with the brightest mean, ``cell_contrast(png, k)`` how much brighter cell k is
than the rest of the image (grey levels, 0..255).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from svg.pipeline import make_random

# The 2×2-token cells (row, col on a 4×4 grid of cells) that classes 0..7 light up: a checkerboard, so no two share
# an edge.
CELLS = [(0, 0), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2), (3, 1), (3, 3)]
NUM_SIGNAL_CLASSES = len(CELLS)
AMPLITUDE = 2.0  # A: the latent offset per unit of guided velocity; noise has std 1
GRID = 8  # tokens per side
PIXELS_PER_TOKEN = 4  # 32 px images


def blob(k: int) -> torch.Tensor:
    """(T,) float64 pattern of class k in row-major token order: a cross, 1 on the two token rows and the two token
    columns of cell k, 2 where they meet (the cell itself), 0 elsewhere.

    A cross and not a lone square because the sin-cos positional embedding is a sum of a row part and a column part:
    a linear read-out of it can only make patterns f(row) + g(col). The cell is still the unique maximum.
    """
    rows = torch.zeros(GRID, dtype=torch.float64)
    cols = torch.zeros(GRID, dtype=torch.float64)
    r, c = CELLS[k]
    rows[2 * r:2 * r + 2] = 1.0
    cols[2 * c:2 * c + 2] = 1.0
    return (rows[:, None] + cols[None, :]).flatten()


def build_class_model(out: Path) -> Path:
    """Write the checkpoint directory (our safetensors format) to ``out`` and return it."""
    pipe = make_random("tiny", seed=0)
    sit, decoder = pipe.sit, pipe.autoencoder.decoder
    hidden = sit.config.hidden_size
    with torch.no_grad():
        # SiT: zero everything trainable; the fixed sin-cos pos_embed is the only token-dependent signal left.
        for name, p in sit.named_parameters():
            if name != "pos_embed":
                p.zero_()
        pos = sit.pos_embed[0].double()  # (T, hidden)
        ln_pos = torch.nn.functional.layer_norm(pos, (hidden,), eps=1e-6)  # what the final layer normalises
        # Label k < 8 embeds to M·e_k, so SiLU(c) = silu(M)·e_k selects column k of the final adaLN's scale part.
        m = 10.0
        silu_m = m / (1.0 + np.exp(-m))
        table = sit.y_embedder.embedding_table.weight
        mod = sit.final_layer.adaLN_modulation[-1]  # Linear(hidden, 2·hidden): [shift | scale]
        mod.bias[hidden:] = -1.0  # 1 + scale = 0 unless a signal class switches its gate on
        for k in range(NUM_SIGNAL_CLASSES):
            table[k, k] = m
            gate = torch.linalg.lstsq(ln_pos, AMPLITUDE * blob(k)[:, None]).solution[:, 0]  # (hidden,)
            mod.weight[hidden:, k] = (gate / silu_m).float()
        sit.final_layer.linear.weight[0, :] = 1.0  # velocity channel 0 = Σ_h LN(pos)_h·gate_h

        # Decoder: blocks add nothing, upsampling copies, conv_in / conv_out read and write channel 0.
        for name, p in decoder.named_parameters():
            p.zero_()
        for module in decoder.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.fill_(1.0)
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) \
                    and module.in_channels != module.out_channels:  # nin_shortcut: keep channel 0
                module.weight[0, 0, 0, 0] = 1.0
        for up in decoder.up:
            if hasattr(up, "upsample"):
                for ch in range(up.upsample.conv.in_channels):
                    up.upsample.conv.weight[ch, ch, 1, 1] = 1.0
        decoder.conv_in.weight[0, 0, 1, 1] = 1.0
        decoder.conv_out.weight[:, 0, 1, 1] = 0.5  # grey = 0.5·SiLU(normalised channel 0) − 0.5, then clamped
        decoder.conv_out.bias[:] = -0.5
    pipe.metadata.update({"random": "false", "description": "hand-set class-sensitive test model "
                          "(tests/server/class_model.py): class k < 8 lights cell k, guidance scales it"})
    pipe.save_dir(out)
    return out


def png_array(data: bytes | str) -> np.ndarray:
    """(H, W) float64 grey levels 0..255 of a PNG given as bytes or base64 text."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert("L"), dtype=np.float64)


def cell_means(image: np.ndarray) -> np.ndarray:
    """(8,) mean grey level of each class's cell."""
    size = 2 * PIXELS_PER_TOKEN
    return np.array([image[r * size:(r + 1) * size, c * size:(c + 1) * size].mean() for r, c in CELLS])


def image_class(image: np.ndarray) -> int:
    """The class whose cell is brightest."""
    return int(np.argmax(cell_means(image)))


def cell_contrast(image: np.ndarray, k: int) -> float:
    """Mean grey level of class k's cell minus that of the rest of the image."""
    size = 2 * PIXELS_PER_TOKEN
    r, c = CELLS[k]
    mask = np.zeros(image.shape, dtype=bool)
    mask[r * size:(r + 1) * size, c * size:(c + 1) * size] = True
    return float(image[mask].mean() - image[~mask].mean())
