"""The flow-matching loss reproduces flow_loss.safetensors and draws its own noise and t correctly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from svg.config import SiTConfig
from svg.flow import flow_matching_loss
from svg.sit import SiT


@pytest.fixture(scope="module")
def fixture_dit(parity_dir):
    spec = json.loads((parity_dir / "manifest.json").read_text())["files"]["dit.safetensors"]["config"]
    model = SiT(SiTConfig(**{k: v for k, v in spec.items() if k in SiTConfig.__dataclass_fields__})).eval()
    weights = {k[len("dit."):]: v for k, v in load_file(parity_dir / "dit.safetensors").items()
               if k.startswith("dit.")}
    model.load_state_dict(weights, strict=True)
    return model


def test_loss_matches_the_reference(parity_dir, fixture_dit):
    manifest = json.loads((parity_dir / "manifest.json").read_text())["files"]["flow_loss.safetensors"]
    data = load_file(parity_dir / "flow_loss.safetensors")
    with torch.no_grad():
        loss, mse, t = flow_matching_loss(fixture_dit, data["input.x"], data["input.y"], noise=data["input.z0"],
                                          u=data["input.u"], shift=manifest["config"]["timestep_shift"])
    for name, got in (("output.t", t), ("output.mse", mse), ("output.loss", loss)):
        atol = manifest["tensors"][name]["suggested_atol"]
        assert got.shape == data[name].shape
        assert (got - data[name]).abs().max().item() <= atol, name


def test_loss_formula_on_a_tiny_model_with_its_own_draws():
    torch.manual_seed(0)
    model = SiT(SiTConfig(input_size=2, in_channels=6, hidden_size=16, depth=1, num_heads=2)).eval()
    x = torch.randn(3, 4, 6)
    y = torch.tensor([0, 5, 9])
    loss, mse, t = flow_matching_loss(model, x, y, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    z0, u = torch.randn(x.shape, generator=gen), torch.rand(3, generator=gen)
    t_ref = 0.4 * u / (1 - 0.6 * u)
    assert torch.allclose(t, t_ref) and bool(((t >= 0) & (t <= 1)).all())
    zt = (1 - t_ref.view(3, 1, 1)) * z0 + t_ref.view(3, 1, 1) * x
    v = model(zt, t_ref, y)[..., :6]  # learn_sigma: the second half of the outputs is not part of the loss
    assert torch.allclose(mse, ((v - (x - z0)) ** 2).mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(loss, mse.mean()) and loss.requires_grad
    loss.backward()
    assert model.final_layer.linear.weight.grad[6:].abs().max() == 0  # no gradient to the sigma half


def test_loss_rejects_bad_shapes():
    model = SiT(SiTConfig(input_size=2, in_channels=6, hidden_size=16, depth=1, num_heads=2)).eval()
    x = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="y.shape"):
        flow_matching_loss(model, x, torch.tensor([1]))
    with pytest.raises(ValueError, match="noise.shape"):
        flow_matching_loss(model, x, torch.tensor([1, 2]), noise=torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="u.shape"):
        flow_matching_loss(model, x, torch.tensor([1, 2]), u=torch.rand(3))
