"""Stage-1 autoencoder losses: perceptual losses (LPIPS-VGG or a no-download alternative), the PatchGAN
discriminator with its hinge loss, and the adaptive GAN weight.

Source: svg_reference.md §2.8 (reference ``LPIPSWithDiscriminatorDecoder``: ``rec = |x − x̂| + 1.0·LPIPS``,
PatchGAN ``NLayerDiscriminator(3, 64, 3, BatchNorm)``, hinge loss, adaptive weight clamped to [0, 1e4] × 0.5,
GAN from ``disc_start``), with the fixes of cases T10 (norms in fp32, finite result, no ``autograd.grad`` before
``disc_start``) and T11 (perceptual nets stay in eval mode whatever the parent does).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenLoss(nn.Module):
    """Base for loss networks: parameters frozen and the module pinned to eval mode (``train()`` is a no-op), so
    dropout or RoPE jitter never makes the loss stochastic (cases T11)."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenLoss":
        return super().train(False)


class LPIPS(FrozenLoss):
    """LPIPS-VGG16 (Zhang et al. 2018, "linear" calibrated version; the taming/reference network).

    Needs two local files, since nothing may be downloaded: ``vgg_path``, a torchvision ``vgg16`` state dict
    (ImageNet weights), and ``lin_path``, the LPIPS ``vgg.pth`` with keys ``lin{0..4}.model.1.weight``.
    ``forward(x, y (B, 3, H, W) in [-1, 1]) -> (B,)`` float32 distances.

    Raises ``FileNotFoundError`` for a missing file.
    """

    # ImageNet-statistics scaling layer of LPIPS, in [-1, 1] units
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)
    CUTS = (4, 9, 16, 23, 30)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of torchvision's vgg16.features
    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self, vgg_path: str | Path, lin_path: str | Path):
        super().__init__()
        from torchvision.models import vgg16

        for p in (vgg_path, lin_path):
            if not Path(p).is_file():
                raise FileNotFoundError(f"LPIPS weight file not found: {p}")
        vgg = vgg16(weights=None)
        vgg.load_state_dict(torch.load(vgg_path, map_location="cpu", weights_only=True))
        self.features = vgg.features[: self.CUTS[-1]]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        for i, conv in enumerate(self.lins):
            conv.weight.data.copy_(lin[f"lin{i}.model.1.weight"])
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))
        self._freeze()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, taps = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i + 1 in self.CUTS:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for lin, a, b in zip(self.lins, self._taps(x.float()), self._taps(y.float())):
            d = (F.normalize(a, dim=1, eps=1e-10) - F.normalize(b, dim=1, eps=1e-10)) ** 2
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total


class EncoderFeatureLoss(FrozenLoss):
    """No-download perceptual loss: an LPIPS-style distance on the hidden states of a frozen ViT encoder (for the
    demo, the SSL-pretrained DINO-family encoder of the autoencoder itself).

    For each transformer block output, tokens are unit-normalised over channels, the squared difference is
    averaged over tokens and channels, and the blocks are summed (LPIPS with uniform weights instead of learned
    ``lin`` layers, Zhang et al. 2018 §3 "baseline"). ``encoder`` is deep-copied, so training never moves it.
    ``forward(x, y (B, 3, H, W) in [-1, 1]) -> (B,)`` float32.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self._freeze()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x.float() + 1) / 2 - self.mean) / self.std
        return self.encoder.forward_intermediates(x, intermediates_only=True)  # [(B, D, h, w)] per block

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for a, b in zip(self._taps(x), self._taps(y)):
            d = (F.normalize(a, dim=1, eps=1e-10) - F.normalize(b, dim=1, eps=1e-10)) ** 2
            total = total + d.sum(1).mean(dim=(1, 2))
        return total


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017; taming ``NLayerDiscriminator``): conv 4×4 stride 2 stacks with
    BatchNorm and LeakyReLU(0.2), weights N(0, 0.02). ``forward(x (B, 3, H, W)) -> (B, 1, h', w')`` logits.
    ``ndf=64, n_layers=3`` is the reference (30×30 map at 256 px)."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``0.5·(mean(relu(1 − D(x))) + mean(relu(1 + D(x̂))))`` (reference §2.8)."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 0.5, eps: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """GAN weight ``clamp(‖∇_L nll‖ / (‖∇_L g‖ + eps), 0, max) · disc_weight``, L = the decoder's last layer
    (Esser et al. 2021 / reference §2.8). Norms are taken in fp32 so fp16 gradients cannot overflow them; a
    non-finite ratio (e.g. 0/0) becomes 0; the result is detached (cases T10).

    Returns a scalar float32 tensor in [0, max_weight · disc_weight].
    """
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    ratio = g_nll.float().norm() / (g_gan.float().norm() + eps)
    ratio = torch.nan_to_num(ratio, nan=0.0, posinf=max_weight, neginf=0.0)
    return torch.clamp(ratio, 0.0, max_weight).detach() * disc_weight
