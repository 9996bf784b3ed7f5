"""`srgan-sqe models [MODEL]`: list the bundled models, or describe one model file.

The listing reads only the header of each bundled `.safetensors` file (its metadata
and tensor shapes): the network, its size and the training degradation come from the
file itself, and neither torch nor the weights are loaded, so it answers at once.
Describing one model (`srgan-sqe models NAME_OR_FILE`) loads and checks it fully.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
from pathlib import Path
from typing import Any

DEGRADATIONS = {
    "scanner": "the scanner degradation (blur, noise, JPEG / JPEG 2000 coded LR)",
    "clean": "the clean reference degradation D_s (Gaussian blur and block mean, lossless LR)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="bundled name or .safetensors file to describe")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the safetensors header alone (8-byte length + JSON)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def weight_free_info(entry: dict[str, Any]) -> dict[str, Any]:
    """What the registry says about a model that ships no weights file."""
    arch = entry.get("arch") or "bicubic"
    info: dict[str, Any] = {
        "arch": arch,
        "blocks": None,
        "channels": None,
        "bicubic_skip": None,
        "halo": None,
        "parameters": None,
        "degradation": None,
        "training_images": 0,
    }
    if arch == "bicubic":
        info.update(blocks=0, channels=0, bicubic_skip=False, halo=2, parameters=0)
        info["summary"] = "bicubic interpolation (no network, no weights)"
    elif entry.get("kind") == "zero-shot":
        info["summary"] = f"{arch}; no weights shipped: trained on each image it enhances"
    else:
        info["summary"] = f"{arch}; no weights shipped"
    return info


def network_info(path: Path) -> dict[str, Any]:
    """What a model file says about itself, read from its header only (no torch).

    Raises CheckpointError (via `read_safetensors_metadata`) for a damaged file and
    ValueError for a garbled config.
    """
    from napari_srgan_sqe.io.checkpoints import read_safetensors_metadata

    meta = read_safetensors_metadata(path)
    gen = json.loads(meta.get("config", "{}")).get("generator", {})
    shapes = _tensor_shapes(path)
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm state
    params = sum(
        math.prod(s)
        for k, s in shapes.items()
        if k.startswith("generator.") and not k.endswith(buffers)
    )
    images = [t for t in meta.get("training_data", "").split(",") if t.strip()]
    degradation = meta.get("degradation") or None
    arch = gen.get("arch", "?")
    blocks, channels = gen.get("n_blocks"), gen.get("channels")
    halo = int(meta["halo"]) if meta.get("halo", "").isdigit() else None
    method = json.loads(meta["method"]) if meta.get("method") else {}
    parts = [arch]
    if blocks is not None and channels is not None:
        parts.append(f"{blocks} residual blocks x {channels} channels")
    if arch == "sr3" and channels is not None:  # a diffusion U-Net: levels and steps
        widths = "/".join(str(channels * m) for m in gen.get("mults", (1, 2, 2)))
        parts.append(f"U-Net {widths} channels, {gen.get('steps', 8)} sampling steps")
    if gen.get("bicubic_skip"):
        parts.append("bicubic skip")
    if gen.get("batch_norm"):
        parts.append("batch norm")
    summary = ", ".join(parts) + f"; {params:,} parameters".replace(",", " ")
    if halo is not None:
        summary += f"; halo {halo} LR px"
    info = {
        "arch": arch,
        "blocks": blocks,
        "channels": channels,
        "bicubic_skip": bool(gen.get("bicubic_skip")),
        "halo": halo,
        "parameters": params,
        "degradation": degradation,
        "training_images": len(images),
        "summary": summary,
    }
    if method:  # files written since the method interface say what they are
        info["kind"] = method.get("kind", "deterministic")
        info["speed"] = method.get("speed_class", "fast")
    return info


def list_bundled() -> list[dict[str, Any]]:
    """The registry's entries with what each file's header says (no torch)."""
    from napari_srgan_sqe.io.checkpoints import CheckpointError
    from napari_srgan_sqe.models.registry import BUNDLED_MODELS, DEFAULT_MODEL, list_models

    out = []
    for m in list_models():
        entry = BUNDLED_MODELS[m["name"]]
        m["default"] = m["name"] == DEFAULT_MODEL
        if entry.path is None:
            m.update(weight_free_info(m))
        elif m["available"]:
            try:
                m.update(network_info(entry.path))
            except (CheckpointError, ValueError, KeyError, OSError) as exc:
                m["available"] = False
                m["error"] = str(exc)
        out.append(m)
    return out


def _print_listing(models: list[dict[str, Any]]) -> None:
    width = max(len(m["name"]) for m in models) + 1
    pad = " " * (width + 5)
    for m in models:
        state = ""
        if not m["available"]:
            state = "  [weights unreadable]" if m.get("error") else "  [weights missing]"
        default = " (default)" if m.get("default") else ""
        how = f"{m.get('kind', 'deterministic')}, {m.get('speed', 'fast')}"
        print(f"{m['name']:<{width}} x{m['scale']}  [{how}]  {m['description']}{default}{state}")
        if "summary" in m:
            print(f"{pad}network: {m['summary']}")
        if m.get("degradation"):
            trained = DEGRADATIONS.get(m["degradation"], m["degradation"])
            if m.get("training_images"):
                trained += f"; {m['training_images']} training images"
            print(f"{pad}trained on: {trained}")
        if m.get("error"):
            print(f"{pad}error: {m['error']}")
        print(f"{pad}licence: {m['licence']}")


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        models = list_bundled()
        if args.json:
            print(json.dumps(models, indent=2))
        else:
            _print_listing(models)
        return 0

    from napari_srgan_sqe.models.modelfile import load_model

    model = load_model(args.model)
    n_params = sum(p.numel() for p in model.generator.parameters())
    info: dict[str, Any] = {
        "name": model.name,
        "variant": model.variant,
        "scale": model.scale,
        "arch": model.descriptor.arch,
        "kind": model.descriptor.kind,
        "speed_class": model.descriptor.speed_class,
        "macs_per_pixel": model.descriptor.macs_per_pixel,
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
        meta: dict[str, str] = info.pop("metadata")
        info.pop("config")
        width = max(len(k) for k in (*info, *meta))
        for key, value in info.items():
            print(f"{key:>{width}}: {value}")
        print("metadata:")  # one entry per line; a long one (training_data) is shortened
        for key, value in sorted(meta.items()):
            text = str(value)
            text = text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"
            print(f"{key:>{width}}: {text}")
    return 0
