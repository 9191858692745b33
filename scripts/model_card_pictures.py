"""Pictures for the demo model card, made from the embedded model (``models/demo``) on the CPU.

    python scripts/model_card_pictures.py            # writes models/demo/card/*.png

* ``samples_5_steps.png``, ``samples_25_steps.png``: a grid of every class (rows) × 8 seeds (columns), Euler,
  guidance scale 3.0, shift 0.4 (the model card's accuracy settings); seeds 0..7, image 0 of each, so
  ``POST /generate {"class_id": c, "seed": s, "steps": n, "cfg": 3.0, "timestep_shift": 0.4}`` gives the same cell.
* ``interpolation.png``: one class between two seeds' initial noises, lerp (top row) above slerp (bottom row), as in
  the paper's Figures 7-9.
* ``edit.png``: source image, the mask (inside = white), and the edit toward another class (SDEdit-style masked
  editing, ``svg.editing.edit_trajectory``).

Everything is batched through ``svg.sampling.step_batch`` (the server's own step function) and decoded by the
model's decoder, so a picture is what the server returns for the same request.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GUIDANCE, SHIFT, SEEDS = 3.0, 0.4, 8


def _sample(m, trajectories) -> np.ndarray:
    """Run trajectories to the end; ``(R, H, W, 3)`` uint8."""
    from server.model import images_to_uint8
    from svg.sampling import step_batch

    while not all(tr.done for tr in trajectories):
        step_batch(m.sit_engine, trajectories)
    return images_to_uint8(m.decode_tokens(torch.stack([tr.z for tr in trajectories])))


def _grid(images: np.ndarray, rows: int, cols: int, scale: int = 2, pad: int = 2) -> Image.Image:
    h, w = images.shape[1:3]
    canvas = Image.new("RGB", (cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas.paste(Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST),
                     (pad + c * (w * scale + pad), pad + r * (h * scale + pad)))
    return canvas


def sample_grid(m, steps: int) -> Image.Image:
    from svg.sampling import Guidance, GuidanceMode, Solver, Trajectory, initial_noise, time_grid

    guidance = Guidance(GuidanceMode.CONSTANT, GUIDANCE)
    trs = [Trajectory(initial_noise(seed, 0, (m.tokens, m.channels)), label, time_grid(steps, SHIFT), guidance,
                      Solver.EULER, num_classes=m.num_classes)
           for label in range(m.num_classes) for seed in range(SEEDS)]
    return _grid(_sample(m, trs), m.num_classes, SEEDS)


def interpolation(m, label: int = 3, seeds: tuple[int, int] = (1, 2), points: int = 8) -> Image.Image:
    from svg.editing import interpolate_noise
    from svg.sampling import Guidance, GuidanceMode, Solver, Trajectory, initial_noise, time_grid

    a, b = (initial_noise(s, 0, (m.tokens, m.channels)) for s in seeds)
    guidance = Guidance(GuidanceMode.CONSTANT, GUIDANCE)
    trs = [Trajectory(interpolate_noise(a, b, r, mode), label, time_grid(25, SHIFT), guidance, Solver.EULER,
                      num_classes=m.num_classes)
           for mode in ("lerp", "slerp") for r in np.linspace(0, 1, points).tolist()]
    return _grid(_sample(m, trs), 2, points, scale=3)


def edit_example(m, source_label: int = 1, target_label: int = 7, seed: int = 4) -> Image.Image:
    from svg.editing import cell_mask, edit_trajectory, editable_region
    from svg.sampling import Guidance, GuidanceMode, Solver, Trajectory, initial_noise, time_grid

    guidance = Guidance(GuidanceMode.CONSTANT, GUIDANCE)
    src = _sample(m, [Trajectory(initial_noise(seed, 0, (m.tokens, m.channels)), source_label, time_grid(25, SHIFT),
                                 guidance, Solver.EULER, num_classes=m.num_classes)])
    size = m.image_size
    mask = np.zeros((size, size), np.float32)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0  # the centre square
    selected = editable_region(torch.from_numpy(mask)[None, None], "inside")
    editable = cell_mask(selected, (m.grid, m.grid))[0]  # (T, 1)
    reference = m.to_tokens(m.encode_images(src))[0]  # (T, C)
    tr = edit_trajectory(reference, target_label, strength=0.8, steps=25, shift=SHIFT, guidance=guidance,
                         solver=Solver.EULER, seed=seed, index=0, editable=editable, num_classes=m.num_classes)
    edited = _sample(m, [tr])
    mask_rgb = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)[None]
    return _grid(np.concatenate([src, mask_rgb, edited]), 1, 3, scale=4)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--out", type=Path, default=None, help="default: MODEL_DIR/card")
    args = ap.parse_args(argv)
    from server.config import ServerConfig
    from server.model import load_model

    torch.set_grad_enabled(False)
    m = load_model(ServerConfig(model_dir=str(args.model_dir), device="cpu", max_rows=256, decode_batch=128))
    out = args.out or args.model_dir / "card"
    out.mkdir(parents=True, exist_ok=True)
    for steps in (5, 25):
        sample_grid(m, steps).save(out / f"samples_{steps}_steps.png")
    interpolation(m).save(out / "interpolation.png")
    edit_example(m).save(out / "edit.png")
    for p in sorted(out.glob("*.png")):
        print(p)


if __name__ == "__main__":
    main()
