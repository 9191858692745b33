"""Self-supervised pretraining of the demo's frozen encoder: DINO self-distillation without labels.

Source: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO): a student and an
EMA teacher see different augmented views; the teacher's output is centred (running mean, momentum 0.9) and
sharpened (temperature 0.04), the student's (temperature 0.1) is trained with cross-entropy towards it on every
pair of different views; the teacher follows the student with a momentum rising from 0.996 to 1 on a cosine.
This reproduces the SVG premise in miniature: DINOv3 weights cannot be downloaded, so the demo encoder (a small
timm Eva of the DINOv3 family) learns its own features on MNIST, is then frozen and used as the SVG encoder.

``--patch-weight W`` (the demo recipe uses it) adds iBOT's masked-patch objective (Zhou et al. 2022, "iBOT: Image
BERT Pre-Training with Online Tokenizer", ICLR, Eq. 2): the student sees the global views with a random subset of
patch embeddings replaced by a mask token and predicts, at those positions, the teacher's patch-head distribution
of the unmasked view. DINO alone shapes only the class token; the SVG latent is made of the patch tokens.

Views are built in batch on the tensor with random affine warps (zoom/crop, rotation, shift), contrast jitter and
noise: 2 global views at the full resolution and ``local_crops`` views at half resolution (multi-crop).

Run: ``python -m training.ssl --data ../shared/data/mnist.npz --out runs/demo/ssl --steps 600 --batch-size 32``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.cli import check_range, require_data, usage_errors
from training.common import (Batches, EMA, Progress, load_checkpoint, rng_state, save_checkpoint,
                             seed_everything, set_rng_state, setup_logging)
from training.data import build_dataset

log = logging.getLogger("training.ssl")


class DINOHead(nn.Module):
    """Projection head: MLP (dim → hidden → hidden → bottleneck), L2-normalise, then a weight-normalised linear
    layer onto ``prototypes`` logits (DINO §3.1, with the weight-norm gain fixed to 1).

    ``forward(x (B, dim) float32) -> (B, prototypes)``.
    """

    def __init__(self, dim: int, prototypes: int = 1024, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        # BatchNorm in the MLP (DINO's ``use_bn`` head option): it removes the component shared by all images,
        # without which the tiny run's teacher outputs are nearly identical, hence uniform after centering.
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_encoder_input(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> the ImageNet-normalised input the SVG autoencoder gives its frozen encoder (reference
    §2.3), so SSL trains on exactly the input distribution the encoder later sees."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


class DINOModel(nn.Module):
    """Encoder + head on the class token (index 0 of ``forward_features``); input in [-1, 1].

    With a ``patch_head`` (iBOT, Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer", §3) the
    model also projects every patch token, and ``forward(x, mask)`` replaces the patch embeddings where ``mask
    (B, N)`` is True by a learned ``mask_token`` before the blocks (masked image modelling).

    ``forward(x (B, 3, H, W), mask=None) -> (B, K)`` class-token logits, or with a patch head
    ``((B, K), (B, N, K_patch))``.
    """

    def __init__(self, encoder: nn.Module, head: DINOHead, patch_head: DINOHead | None = None):
        super().__init__()
        self.encoder, self.head, self.patch_head = encoder, head, patch_head
        self._mask: torch.Tensor | None = None
        if patch_head is not None:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.num_features))
            encoder.patch_embed.register_forward_hook(self._apply_mask)

    def _apply_mask(self, module: nn.Module, args, out: torch.Tensor) -> torch.Tensor | None:
        # a hook, because timm's Eva embeds patches and adds the prefix tokens inside forward_features
        if self._mask is None:
            return None
        flat = out.reshape(out.shape[0], -1, out.shape[-1])  # (B, H, W, D) with dynamic_img_size, else (B, N, D)
        flat = torch.where(self._mask.unsqueeze(-1), self.mask_token.to(flat.dtype), flat)
        return flat.reshape(out.shape)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        self._mask = mask
        try:
            f = self.encoder.forward_features(to_encoder_input(x))
        finally:
            self._mask = None
        cls = self.head(f[:, 0])
        if self.patch_head is None:
            return cls
        patches = f[:, self.encoder.num_prefix_tokens:]
        return cls, self.patch_head(patches.reshape(-1, patches.shape[-1])).view(*patches.shape[:2], -1)


def random_patch_masks(batch: int, tokens: int, gen: torch.Generator, ratio: tuple[float, float] = (0.1, 0.5),
                       prob: float = 0.5) -> torch.Tensor:
    """iBOT masks (B, N) bool: each image is masked with probability ``prob``, then a uniform ``ratio`` of its
    patches at random positions (iBOT §3 / Appendix: prediction ratio 0.1–0.5 on half of the images)."""
    u = torch.rand(batch, 2, generator=gen)
    frac = torch.where(u[:, 0] < prob, ratio[0] + (ratio[1] - ratio[0]) * u[:, 1], torch.zeros(batch))
    scores = torch.rand(batch, tokens, generator=gen)
    ranks = scores.argsort(1).argsort(1)
    return ranks < (frac * tokens).round().long().unsqueeze(1)


def masked_patch_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, center: torch.Tensor,
                      t_student: float = 0.1, t_teacher: float = 0.04) -> torch.Tensor:
    """iBOT's masked-patch self-distillation (Eq. 2): cross-entropy between the centred, sharpened teacher
    distribution of each patch of the *unmasked* view and the student distribution of the same patch of the
    *masked* view, averaged over the masked patches of each image, then over images with a mask.
    ``student``/``teacher`` (B, N, K) logits, ``mask`` (B, N) bool, ``center`` (1, K)."""
    tgt = F.softmax((teacher - center) / t_teacher, dim=-1).detach()
    ce = -(tgt * F.log_softmax(student / t_student, dim=-1)).sum(-1)  # (B, N)
    m = mask.float()
    per_image = (ce * m).sum(1) / m.sum(1).clamp(min=1.0)
    has = (m.sum(1) > 0).float()
    return (per_image * has).sum() / has.sum().clamp(min=1.0)


def random_views(x: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """One augmented view per image: ``x (B, 3, H, W)`` in [-1, 1] -> ``(B, 3, size, size)`` in [-1, 1].

    A random crop of relative area ``scale`` (side = sqrt(area)), rotation ±20°, a shift within the image,
    then contrast ×[0.6, 1.0], Gaussian noise σ 0.1 with probability 0.5 (no colour jitter: MNIST is grey).
    """
    b = x.shape[0]
    u = torch.rand(b, 6, generator=gen)
    side = torch.sqrt(scale[0] + (scale[1] - scale[0]) * u[:, 0])  # fraction of the image side
    angle = (u[:, 1] - 0.5) * math.radians(40)
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    tx, ty = (u[:, 2] - 0.5) * 2 * (1 - side), (u[:, 3] - 0.5) * 2 * (1 - side)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    # padding_mode="border" repeats the black MNIST background
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 0.6 + 0.4 * u[:, 4].view(b, 1, 1, 1)
    v = (v + 1) * contrast - 1
    noisy = (u[:, 5] < 0.5).float().view(b, 1, 1, 1)
    v = v + noisy * 0.1 * torch.randn(v.shape, generator=gen)
    return v.clamp(-1, 1)


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              t_student: float = 0.1, t_teacher: float = 0.04) -> torch.Tensor:
    """Cross-entropy between the centred/sharpened teacher distribution of each global view and the student
    distribution of every other view, averaged over pairs (DINO Eq. 1 and Algorithm 1)."""
    targets = [F.softmax((t - center) / t_teacher, dim=-1).detach() for t in teacher]
    logps = [F.log_softmax(s / t_student, dim=-1) for s in student]
    total, pairs = 0.0, 0
    for i, tgt in enumerate(targets):
        for j, lp in enumerate(logps):
            if i == j:  # the same global view
                continue
            total = total + (-(tgt * lp).sum(-1)).mean()
            pairs += 1
    return total / pairs


def cosine(step: int, total: int, start: float, end: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch: int = 500) -> dict[str, torch.Tensor]:
    """Frozen features of [-1, 1] ``images (N, 3, H, W)`` for the kNN probe: ``cls`` (N, D), the class token;
    ``patch_grid`` (N, 16·D), the final-norm patch tokens (what the SVG latent is made of) average-pooled to a
    4×4 grid and flattened."""
    encoder.eval()
    prefix = encoder.num_prefix_tokens
    cls, grid = [], []
    for chunk in images.split(batch):
        f = encoder.forward_features(to_encoder_input(chunk))
        cls.append(f[:, 0])
        side = int((f.shape[1] - prefix) ** 0.5)
        tokens = f[:, prefix:].transpose(1, 2).reshape(f.shape[0], -1, side, side)  # (B, D, h, w)
        grid.append(F.adaptive_avg_pool2d(tokens, 4).flatten(1))
    return {"cls": torch.cat(cls), "patch_grid": torch.cat(grid)}


@torch.no_grad()
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07, classes: int = 10) -> float:
    """Weighted k-NN classifier on cosine similarity (DINO §4.1 / Wu et al. 2018): each of the k nearest
    training features votes for its label with weight exp(sim / T). Returns top-1 accuracy in [0, 1]."""
    train_x, test_x = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    correct = 0
    for xs, ys in zip(test_x.split(1000), test_y.split(1000)):
        sim, idx = (xs @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(xs.shape[0], classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == ys).sum().item()
    return correct / test_x.shape[0]


def evaluate_knn(encoder: nn.Module, data: str, train_items: int = 20000) -> dict[str, float]:
    """k-NN top-1 accuracy on the MNIST test set with ``train_items`` training images as the memory bank."""
    train, test = build_dataset(data, 32, "train"), build_dataset(data, 32, "test")
    tx, ty = train.tensors[0][:train_items], train.tensors[1][:train_items]
    ftr, fte = extract_features(encoder, tx), extract_features(encoder, test.tensors[0])
    return {k: knn_accuracy(ftr[k], ty, fte[k], test.tensors[1]) for k in ftr}


def train_ssl(encoder: nn.Module, data: str, out: str | Path, steps: int = 1500, batch_size: int = 64,
              lr: float = 5e-4, weight_decay: tuple[float, float] = (0.04, 0.4), warmup: int = 50,
              local_crops: int = 2, prototypes: int = 1024, seed: int = 0, log_every: int = 50,
              ckpt_every: int = 100, image_size: int = 32, layerscale_init: float = 1.0,
              patch_weight: float = 0.0, patch_prototypes: int = 256) -> nn.Module:
    """DINO-pretrain ``encoder`` (a timm ``Eva``; trained in place) on the images at ``data`` and return it frozen
    (eval mode, ``requires_grad=False``). Resumes from ``out/ssl_last.pt`` when present; writes
    ``out/encoder.pt`` (teacher encoder state dict, the weights DINO evaluates) at the end.

    ``patch_weight > 0`` adds iBOT's masked-patch self-distillation (:func:`masked_patch_loss`, weight
    ``patch_weight``, a separate ``patch_prototypes`` head): DINO alone trains the class token only, while the SVG
    latent is made of the patch tokens, which then need an objective of their own.
    """
    out = Path(out)
    seed_everything(seed)
    dim = encoder.num_features
    encoder.train().requires_grad_(True)  # build_dinov3 returns a frozen encoder
    with torch.no_grad():
        # LayerScale init 1e-5 (DINOv3) makes every image's class token nearly identical at step 0; after
        # centering the teacher is then uniform and DINO sits at loss ln(K) (collapse). A short run needs the
        # blocks to matter from the start, so the demo re-initialises the LayerScale gains.
        for name, p in encoder.named_parameters():
            if name.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2"):
                p.fill_(layerscale_init)
    patch_head = DINOHead(dim, patch_prototypes) if patch_weight > 0 else None
    student = DINOModel(encoder, DINOHead(dim, prototypes), patch_head)
    teacher = EMA(student, decay=0.996)
    params = [{"params": [p for n, p in student.named_parameters() if p.ndim > 1 and "token" not in n]},
              {"params": [p for n, p in student.named_parameters() if p.ndim <= 1 or "token" in n],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=lr)
    center = torch.zeros(1, prototypes)
    center_patch = torch.zeros(1, patch_prototypes)
    tokens = (image_size // encoder.patch_embed.patch_size[0]) ** 2
    gen = torch.Generator().manual_seed(seed + 1)
    start = 0
    ckpt = load_checkpoint(out / "ssl_last.pt")
    if ckpt is not None:
        student.load_state_dict(ckpt["student"])
        teacher.load_state_dict(ckpt["teacher"])
        opt.load_state_dict(ckpt["optimizer"])
        center, start = ckpt["center"], ckpt["step"]
        center_patch = ckpt.get("center_patch", center_patch)
        set_rng_state(ckpt["rng"], {"views": gen})
        log.info("ssl: resumed at step %d", start)
    batches = Batches(build_dataset(data, image_size), batch_size, seed=seed).iterate(start)
    progress = Progress(steps, start, log_every, "ssl")
    student.train()
    for step in range(start + 1, steps + 1):
        x, _ = next(batches)
        for g, group in enumerate(opt.param_groups):
            group["lr"] = lr * min(1.0, step / warmup) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1)
            if g == 0:
                group["weight_decay"] = cosine(step, steps, weight_decay[1], weight_decay[0])
        globals_ = [random_views(x, image_size, (0.5, 1.0), gen) for _ in range(2)]
        locals_ = [random_views(x, image_size // 2, (0.15, 0.4), gen) for _ in range(local_crops)]
        teacher.model.train()  # the head's BatchNorm uses batch statistics in the teacher too (DINO)
        logs = {}
        if patch_head is None:
            with torch.no_grad():
                t_out = teacher.model(torch.cat(globals_)).chunk(2)
            s_out = list(student(torch.cat(globals_)).chunk(2))
            if locals_:
                s_out += list(student(torch.cat(locals_)).chunk(local_crops))
            loss = dino_loss(s_out, list(t_out), center)
        else:  # iBOT: the student sees masked global views, the teacher the same views unmasked
            masks = random_patch_masks(2 * x.shape[0], tokens, gen)
            with torch.no_grad():
                t_cls, t_patch = teacher.model(torch.cat(globals_))
            s_cls, s_patch = student(torch.cat(globals_), mask=masks)
            t_out, s_out = t_cls.chunk(2), list(s_cls.chunk(2))
            if locals_:
                s_out += list(student(torch.cat(locals_))[0].chunk(local_crops))
            cls_loss = dino_loss(s_out, list(t_out), center)
            patch_loss = masked_patch_loss(s_patch, t_patch, masks, center_patch)
            loss = cls_loss + patch_weight * patch_loss
            logs = {"cls": cls_loss.item(), "patch": patch_loss.item()}
            with torch.no_grad():
                center_patch = 0.9 * center_patch + 0.1 * t_patch.mean((0, 1)).unsqueeze(0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        teacher.update(student, decay=cosine(step, steps, 0.996, 1.0))
        with torch.no_grad():  # centre update, momentum 0.9 (DINO Algorithm 1)
            center = 0.9 * center + 0.1 * torch.cat(t_out).mean(0, keepdim=True)
        progress(step, loss=loss.item(), **logs)
        if step % ckpt_every == 0 or step == steps:
            save_checkpoint(out / "ssl_last.pt", {"student": student.state_dict(), "teacher": teacher.state_dict(),
                                                  "optimizer": opt.state_dict(), "center": center,
                                                  "center_patch": center_patch, "step": step,
                                                  "rng": rng_state({"views": gen})})
    frozen = teacher.model.encoder
    torch.save(frozen.state_dict(), out / "encoder.pt")
    return frozen.eval().requires_grad_(False)


def build_demo_encoder():
    """The demo's DINOv3-family encoder from the ``demo`` autoencoder preset's ``DinoConfig``, through
    ``svg.dinov3.build_dinov3`` (a timm ``Eva``)."""
    from svg.config import AE_PRESETS

    cfg = AE_PRESETS["demo"].dino
    try:
        from svg.dinov3 import build_dinov3
    except ImportError:  # model package not landed yet: the same timm Eva, same kwargs, same state-dict keys
        return _eva_from_config(cfg)
    return build_dinov3(cfg)


def _eva_from_config(cfg):
    from functools import partial

    from timm.layers import LayerNorm
    from timm.models.eva import Eva

    return Eva(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
               num_heads=cfg.num_heads, mlp_ratio=cfg.swiglu_hidden / cfg.embed_dim, swiglu_mlp=True,
               swiglu_align_to=8, qkv_bias=True, init_values=cfg.layerscale_init, rope_type="dinov3",
               rope_temperature=cfg.rope_base, rope_rotate_half=True, use_rot_pos_emb=True, use_abs_pos_emb=False,
               num_reg_tokens=cfg.num_storage_tokens, use_fc_norm=False, num_classes=0, dynamic_img_size=True,
               norm_layer=partial(LayerNorm, eps=cfg.norm_eps))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.ssl", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="mnist.npz or an ImageFolder root")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--local-crops", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-weight", type=float, default=0.0,
                   help="weight of iBOT's masked-patch loss on the patch tokens (0: DINO only)")
    p.add_argument("--knn", action="store_true", help="report k-NN accuracy vs the same encoder at random init")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is faster on an oversubscribed machine; default: torch's choice)")
    a = p.parse_args(argv)
    with usage_errors(p):
        for name in ("steps", "batch_size", "local_crops"):
            check_range(name, getattr(a, name), getattr(a, name) >= 1, ">= 1")
        check_range("lr", a.lr, a.lr > 0, "> 0")
        check_range("patch_weight", a.patch_weight, a.patch_weight >= 0, ">= 0")
    require_data(p, a.data)
    setup_logging(Path(a.out) / "ssl.log")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    encoder = build_demo_encoder()
    random_init = build_demo_encoder() if a.knn else None
    t0 = time.perf_counter()
    frozen = train_ssl(encoder, a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                       local_crops=a.local_crops, seed=a.seed, patch_weight=a.patch_weight)
    result = {"steps": a.steps, "wall_s": round(time.perf_counter() - t0, 1)}
    if a.knn:
        result["knn_pretrained"] = evaluate_knn(frozen, a.data)
        result["knn_random_init"] = evaluate_knn(random_init, a.data)
    (Path(a.out) / "ssl_result.json").write_text(json.dumps(result, indent=2))
    log.info("ssl done: %s", result)


if __name__ == "__main__":
    main()
