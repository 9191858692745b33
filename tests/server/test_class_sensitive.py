"""Server tests on a model whose output depends strongly on the class label and the guidance scale
(tests/server/class_model.py), over real HTTP to uvicorn on loopback.

Class k in 0..7 lights a cross whose centre is cell k of the image; the guided velocity is ``w·v_k`` (the null label's
velocity is exactly 0), so a generated latent is ``noise + w_eff·v_k`` with ``w_eff`` the step-size-weighted guidance
scale of the request's schedule. These tests check what a client sees: each image of a mixed-label request has its
own class, the guidance scale and schedule change the image by the amount their formula says, and /edit moves the
masked region toward the target class.
"""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import torch

from svg.pipeline import SVGPipeline
from svg.sampling import initial_noise
from tests.server.class_model import (NUM_SIGNAL_CLASSES, build_class_model, cell_contrast, cell_means, image_class,
                                      png_array)
from tests.server.conftest import png_bytes, start_server

import base64


@pytest.fixture(scope="module")
def class_model_dir(tmp_path_factory):
    return build_class_model(tmp_path_factory.mktemp("class_model") / "model")


@pytest.fixture(scope="module")
def class_server(class_model_dir, tmp_path_factory):
    srv = start_server(class_model_dir, tmp_path_factory, "class", max_rows=8, batch_wait_s=0.2, max_steps=250,
                       max_images=8, request_timeout_s=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cc(class_server):
    with class_server.client() as c:
        yield c


@pytest.fixture(scope="module")
def pipe(class_model_dir):
    return SVGPipeline.from_dir(class_model_dir)  # eval mode


def generate(cc, **body) -> dict:
    r = cc.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def grid(steps: int, shift: float) -> list[float]:
    """The shifted time grid from its definition (docs/sampling.md), independent of svg.sampling."""
    return [(i / steps) if shift <= 0 else shift * (i / steps) / (1 + (shift - 1) * (i / steps))
            for i in range(steps + 1)]


def expected_image(pipe, seed: int, index: int, label: int, w_eff: float) -> np.ndarray:
    """Grey levels of ``decode(noise + w_eff·v_label)``: the ODE's exact solution for this constant field."""
    t, c = pipe.sit.config.num_tokens, pipe.sit.config.in_channels
    noise = initial_noise(seed, index, (t, c))
    with torch.no_grad():
        v = pipe.sit(noise[None], torch.zeros(1), torch.tensor([label]))[0, :, :c]  # x- and t-independent
        image = pipe.decode_tokens((noise + w_eff * v)[None])[0]
    rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    return rgb.mean(axis=-1)  # the PNGs are grey (R = G = B): their "L" conversion is this mean up to rounding


def test_every_image_of_a_mixed_label_request_has_its_own_class(cc):
    labels = [5, 2, 7, 0, 3, 6, 1, 4]
    out = generate(cc, class_id=labels, steps=4, cfg=4.0, seed=3)
    got = [image_class(png_array(img["png_base64"])) for img in out["images"]]
    assert got == labels
    assert [img["class_id"] for img in out["images"]] == labels
    assert [img["index"] for img in out["images"]] == list(range(8))
    for img, k in zip(out["images"], labels):
        assert cell_contrast(png_array(img["png_base64"]), k) > 80  # unmistakable, not a grey-level coincidence


def test_concurrent_requests_with_different_classes_keep_their_classes(cc):
    # Requests that share DiT steps (batch wait 0.2 s) must not swap or share labels.
    bodies = [{"class_id": [k, (k + 3) % 8], "steps": 6, "cfg": 3.0, "seed": 10 + k} for k in range(6)]
    with cf.ThreadPoolExecutor(len(bodies)) as ex:
        responses = list(ex.map(lambda b: cc.post("/generate", json=b), bodies))
    for body, r in zip(bodies, responses):  # asserted here, in the test's thread
        assert r.status_code == 200, r.text
        got = [image_class(png_array(img["png_base64"])) for img in r.json()["images"]]
        assert got == body["class_id"], (body, got)


@pytest.mark.parametrize("cfg,mode,sampler,shift,w_eff", [
    (1.0, "constant", "euler", 0.15, 1.0),   # cfg 1: no unconditional twin, v = v_c
    (2.0, "constant", "euler", 0.15, 2.0),
    (4.0, "constant", "heun", 0.15, 4.0),    # a constant field: Heun is exact too
    (4.0, "cfg_star", "euler", 1.0, 4.0 * (1 - grid(4, 1.0)[1])),  # first step's velocity is 0 (CFG-Zero*, K = 1)
    (3.0, "cfg_star", "euler", 0.15, 3.0 * (1 - grid(4, 0.15)[1])),
])
def test_guidance_scale_and_schedule_match_the_closed_form(cc, pipe, cfg, mode, sampler, shift, w_eff):
    label, seed = 6, 21
    out = generate(cc, class_id=label, steps=4, cfg=cfg, guidance_mode=mode, sampler=sampler, timestep_shift=shift,
                   seed=seed)
    image = png_array(out["images"][0]["png_base64"])
    want = expected_image(pipe, seed, 0, label, w_eff)
    assert np.abs(image - want).max() <= 2.0, np.abs(image - want).max()
    guided_rows = 4 * (1 if cfg == 1.0 else 2) - (1 if mode == "cfg_star" else 0)  # zero-init step: 1 null row
    assert out["nfe"] == guided_rows * (2 if sampler == "heun" else 1)


def test_guidance_brightens_the_class_cell_in_order(cc):
    contrasts = []
    for cfg in (1.0, 1.5, 2.0, 3.0):
        out = generate(cc, class_id=2, steps=4, cfg=cfg, seed=8)
        image = png_array(out["images"][0]["png_base64"])
        assert image_class(image) == 2
        contrasts.append(cell_contrast(image, 2))
    steps = np.diff(contrasts)
    assert (steps > 2.0).all(), contrasts  # each larger scale: visibly more contrast, never less
    # cfg 0: v = v_u = 0, the class disappears: the image is the decoded noise alone.
    noise_only = png_array(generate(cc, class_id=2, steps=4, cfg=0.0, seed=8)["images"][0]["png_base64"])
    assert cell_contrast(noise_only, 2) < contrasts[0] - 50


def _b64_png(array: np.ndarray) -> str:
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_edit_moves_the_masked_region_toward_the_target_class(cc):
    source_png = generate(cc, class_id=0, steps=4, cfg=4.0, seed=1)["images"][0]["png_base64"]
    source = png_array(source_png)
    assert image_class(source) == 0
    box = [24, 24, 32, 32]  # pixels of cell 7 = the centre of class 7's cross, far from class 0's cell
    results = {}
    for target in (7, 3, 100):  # 7: its cross's centre is the box; 3: only a column band crosses it; 100: no signal
        r = cc.post("/edit", json={"image": source_png, "box": box, "class_id": target, "strength": 1.0, "steps": 6,
                                   "cfg": 4.0, "seed": 2})
        assert r.status_code == 200, r.text
        assert r.json()["images"][0]["class_id"] == target
        results[target] = png_array(r.json()["images"][0]["png_base64"])
    recon = cc.post("/reconstruct", json={"image": source_png})
    assert recon.status_code == 200, recon.text
    base = png_array(recon.json()["images"][0]["png_base64"])

    inside = np.zeros(base.shape, dtype=bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    box_mean = {k: float(v[inside].mean()) for k, v in results.items()}
    # Toward the target: the box is brightest when it is class 7's cell, less for a band, least for no class.
    # The edit band is one latent cell wide around the box (svg.editing.cell_mask), so class 3's column band
    # reaches the box almost fully too: 7 vs 3 is a small margin, 3 vs no class a large one.
    assert box_mean[7] > box_mean[3] + 5 and box_mean[3] > box_mean[100] + 30, box_mean
    assert box_mean[7] > float(base[inside].mean()) + 60, (box_mean, float(base[inside].mean()))
    # The box is where the change happened: far from it (two cells away) the image moves much less than inside.
    far = np.zeros(base.shape, dtype=bool)
    far[:16, :16] = True
    change_inside = np.abs(results[7] - base)[inside].mean()
    change_far = np.abs(results[7] - base)[far].mean()
    assert change_inside > 3 * change_far, (change_inside, change_far)  # band: 1 cell + blur (cell_mask)
    assert cell_means(results[7])[0] > cell_means(results[7])[1:7].mean()  # class 0's cell is still the source's
