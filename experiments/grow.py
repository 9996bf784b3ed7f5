"""Grow a trained lrnet generator wider and/or deeper without changing what it computes,
as the starting point of a run that asks whether more capacity helps.

    python experiments/grow.py srgan-sqe-he-x4 --channels 64 --blocks 12 --out grown.safetensors

Wider: the new channels read the old ones through small random weights, but nothing
reads them yet (their weights into old channels and into the tail are zero), so the
output is unchanged and training decides what they learn. Deeper: new residual blocks
are appended with their second convolution at zero, i.e. identity blocks.
The script checks that the grown model's output equals the original's on a random
image and writes a model file that `init_from` accepts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from napari_srgan_sqe import load_model
from napari_srgan_sqe.models.modelfile import SRModel, new_model, save_model


def _embed(old: torch.Tensor, new: torch.Tensor, gen: torch.Generator, std: float) -> None:
    """Copy `old` into the leading slice of `new`; new output rows read every input with
    small random weights, old output rows ignore the new inputs (zero)."""
    new.zero_()
    if new.dim() == 4 and new.shape[0] > old.shape[0]:  # rows for the new channels
        rows = torch.randn(new.shape[0] - old.shape[0], *new.shape[1:], generator=gen) * std
        new[old.shape[0] :] = rows
    idx = tuple(slice(0, s) for s in old.shape)
    new[idx] = old


def grow(model: SRModel, channels: int, blocks: int, *, seed: int = 0) -> SRModel:
    cfg = model.config.generator
    if cfg.arch != "lrnet":
        raise SystemExit(f"only lrnet generators grow here, not {cfg.arch}")
    if channels < cfg.channels or blocks < cfg.n_blocks:
        raise SystemExit("the grown generator must be at least as wide and as deep")
    gen_cfg = cfg.model_copy(update={"channels": channels, "n_blocks": blocks})
    config = model.config.model_copy(update={"generator": gen_cfg})
    grown = new_model(config)
    old_sd = model.generator.state_dict()
    new_sd = grown.generator.state_dict()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, new in new_sd.items():
            if key in old_sd:
                _embed(old_sd[key], new, g, std=1e-2)
        grown.generator.load_state_dict(new_sd)
        # appended blocks: zero their last conv so that each adds nothing
        for i in range(cfg.n_blocks, blocks):
            block = grown.generator.blocks[i]
            last = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
    grown.metadata.update(model.metadata)
    return grown.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="bundled name or model file (an lrnet)")
    ap.add_argument("--channels", type=int, required=True)
    ap.add_argument("--blocks", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model = load_model(args.model).eval()
    grown = grow(model, args.channels, args.blocks)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = float((grown(x) - model(x)).abs().max())
    if diff > 1e-5:
        raise SystemExit(f"the grown model computes something else (max difference {diff:.2e})")
    save_model(grown, args.out, metadata={"parent": model.name})
    print(f"{args.out}: {args.blocks} x {args.channels}, same output (max difference {diff:.1e})")


if __name__ == "__main__":
    main()
