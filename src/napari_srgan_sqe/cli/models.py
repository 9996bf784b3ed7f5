"""`srgan-sqe models [MODEL]`: list the bundled models, or describe one model file."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="bundled name or .safetensors file to describe")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from napari_srgan_sqe.models.modelfile import load_model
    from napari_srgan_sqe.models.registry import list_models

    if args.model is None:
        models = list_models()
        if args.json:
            print(json.dumps(models, indent=2))
            return 0
        for m in models:
            state = "" if m["available"] else "  [weights missing]"
            print(f"{m['name']:<20} x{m['scale']}  {m['description']}{state}")
            print(f"{'':<20}      licence: {m['licence']}")
        return 0
    model = load_model(args.model)
    n_params = sum(p.numel() for p in model.generator.parameters())
    info = {
        "name": model.name,
        "variant": model.variant,
        "scale": model.scale,
        "halo_lr_px": model.halo,
        "parameters": n_params,
        "identity": model.identity,
        "has_encoder": model.encoder is not None,
        "config": model.config.model_dump(),
        "metadata": {k: v for k, v in model.metadata.items() if k != "config"},
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if key != "config":
                print(f"{key:>12}: {value}")
    return 0
