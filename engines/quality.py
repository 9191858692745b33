"""Quality checks of an engine against eager float32: the velocity's max abs difference, sample drift.

Every speed number of the ladder (engines/bench.py) carries one of these beside it (style principle 7).
"""

from __future__ import annotations

import torch
from torch import nn


def sit_probe_inputs(config, rows: int, seed: int, device: torch.device | str = "cpu"):
    """Deterministic probe inputs: ``x (rows, T, C) ~ N(0, 1)``, ``t (rows,)`` spread over [0, 1),
    ``y (rows,)`` cycling through the classes and the null label."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, config.num_tokens, config.in_channels, generator=gen)
    t = torch.arange(rows, dtype=torch.float32) / rows
    y = torch.arange(rows, dtype=torch.int64) % (config.num_classes + 1)
    return x.to(device), t.to(device), y.to(device)


@torch.no_grad()
def velocity_max_abs_diff(engine, reference: nn.Module, *, rows: int = 4, seed: int = 0) -> float:
    """Max |engine(x, t, y) − reference(x, t, y)| over the velocity channels, reference in float32 on its device.

    Args:
        engine: any engine (or callable with ``SiT.forward``'s signature).
        reference: an fp32 ``svg.sit.SiT`` with the same weights (not the engine's own module, which a half
            precision engine has cast in place).
        rows: probe rows (must fit the engine's ``max_rows``).
        seed: probe seed.

    Returns:
        The max abs difference (float, in velocity units).
    """
    config = reference.config
    device = next(reference.parameters()).device
    x, t, y = sit_probe_inputs(config, rows, seed, device)
    ref = reference(x, t, y)[..., : config.in_channels].float()
    out = engine(x, t, y)[..., : config.in_channels].float().to(device)
    return (out - ref).abs().max().item()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a − b| in float32 on ``a``'s device (0.0 for empty tensors)."""
    if a.numel() == 0:
        return 0.0
    return (a.float() - b.float().to(a.device)).abs().max().item()


class _EngineAsSiT:
    """What ``training.evaluate.generate`` needs of ``pipe.sit``: ``config``, ``eval()`` and the forward call."""

    def __init__(self, engine, config) -> None:
        self.engine, self.config = engine, config

    def eval(self) -> "_EngineAsSiT":
        return self

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.engine(x, t, y)


def class_accuracy(model_dir, data, kinds=("eager", "compile"), *, steps: int = 10, per_class: int = 20,
                   guidance_scale: float = 2.0, shift: float = 0.4, dtype=None, seed: int = 0) -> dict:
    """Class-conditional accuracy of the trained demo model's samples, per engine kind (issue 6 quality gate).

    The SiT runs through ``engines.create(kind, ...)`` with all ``per_class × classes`` images in one guided batch
    (one compiled bucket); the decoder runs eagerly. The samples are judged by the training package's MNIST
    classifier (``training.evaluate``). An engine passes when its accuracy is within 1 point of eager float32.

    Args:
        model_dir: our checkpoint directory (``models/demo``).
        data: ``mnist.npz`` (trains the evaluation classifier on first use, cached under ``runs/eval``).
        kinds: engine kinds to check; eager float32 is always measured first as the reference.
        steps, per_class, guidance_scale, shift, seed: sampling settings (defaults of the training evaluation).
        dtype: engine dtype for the non-reference kinds (default: the device policy).

    Returns:
        ``{"eager-fp32": acc, kind: acc, ..., "max_drop_points": float}`` with accuracies in [0, 1].
    """
    import types

    from engines import create
    from svg.pipeline import SVGPipeline
    from training.evaluate import classify, generate, load_or_train_classifier

    classifier, _ = load_or_train_classifier(data)
    result = {}
    for name, kind, kind_dtype in [("eager-fp32", "eager", torch.float32)] + [(k, k, dtype) for k in kinds]:
        pipe = SVGPipeline.from_dir(model_dir)
        config = pipe.sit.config
        labels = torch.arange(config.num_classes).repeat_interleave(per_class)
        rows = 2 * labels.shape[0]  # every image guided: a conditional row and its unconditional twin
        engine = create(kind, pipe.sit, device="cpu", dtype=kind_dtype, max_rows=rows,
                        buckets=[rows] if kind == "compile" else None)
        proxy = types.SimpleNamespace(sit=_EngineAsSiT(engine, config), decode_tokens=pipe.decode_tokens)
        images = generate(proxy, labels, steps, guidance_scale, shift, seed, batch=labels.shape[0])
        result[name] = (classify(classifier, images) == labels).float().mean().item()
    reference = result["eager-fp32"]
    result["max_drop_points"] = max(100 * (reference - acc) for acc in result.values())
    return result


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m engines.quality --model-dir models/demo --data mnist.npz --kinds compile``."""
    import argparse
    import json
    import logging

    from engines import EngineKind
    from svg.cli import choice_list_type, existing_file, int_type
    from svg.sampling import MAX_STEPS

    parser = argparse.ArgumentParser(prog="python -m engines.quality",
                                     description="Demo-model class accuracy per engine vs eager float32")
    parser.add_argument("--model-dir", default="models/demo")
    parser.add_argument("--data", required=True, help="mnist.npz")
    parser.add_argument("--kinds", type=choice_list_type([k.value for k in EngineKind]), default=["compile"],
                        help="comma-separated engine kinds besides eager fp32")
    parser.add_argument("--dtype", default=None, choices=["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"],
                        help="engine dtype for those kinds (default: device policy)")
    parser.add_argument("--steps", type=int_type(1, MAX_STEPS), default=10)
    parser.add_argument("--per-class", type=int_type(1, 1000), default=20)
    args = parser.parse_args(argv)
    existing_file(parser, "--model-dir", args.model_dir, directory=True)
    existing_file(parser, "--data", args.data)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = class_accuracy(args.model_dir, args.data, tuple(args.kinds), steps=args.steps,
                            per_class=args.per_class, dtype=args.dtype)
    logging.getLogger("engines.quality").info("%s", json.dumps(result))
    if result["max_drop_points"] > 1.0:
        raise SystemExit(f"class accuracy dropped by {result['max_drop_points']:.2f} points (> 1 allowed)")


if __name__ == "__main__":
    main()
