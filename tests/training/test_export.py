"""The exported model directory as other users and the server see it: files readable by everyone (0644, so the
container's non-root user can read a host-exported directory; case T31) and a config that carries what was trained."""

from __future__ import annotations

import stat

import torch

from svg.latent import LatentNorm
from training.export import export_latent_stats, export_sit

from .helpers import MICRO_SIT


def test_exported_safetensors_are_world_readable(tmp_path):
    from svg.sit import SiT

    sit_path = export_sit(SiT(MICRO_SIT), tmp_path)
    stats_path = export_latent_stats(LatentNorm(torch.zeros(1, 1, 4), torch.ones(1, 1, 4)), tmp_path)
    for path in (sit_path, stats_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path, oct(path.stat().st_mode))
