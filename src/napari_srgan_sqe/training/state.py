"""Training state as flat tensors, so checkpoints are safetensors, never pickles.

Module weights are stored under `<name>.<param>`; Adam moments under
`opt.<name>.<index>.<key>`. Hyper-parameters come from the config, not the file.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def pack_modules(modules: Mapping[str, nn.Module | None]) -> dict[str, torch.Tensor]:
    """All parameters and buffers of the named modules, flattened with a name prefix."""
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if module is None:
            continue
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().cpu().contiguous()
    return out


def unpack_modules(
    tensors: dict[str, torch.Tensor],
    modules: Mapping[str, nn.Module | None],
    *,
    may_add: tuple[str, ...] = (),
) -> None:
    """Load the tensors written by `pack_modules` back into the modules (strict).
    `may_add`: prefixes of parameters a module may have that the tensors lack (a warm
    start into a network grown by parts that start as the identity)."""
    for name, module in modules.items():
        if module is None:
            continue
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        load_grown(module, state, may_add)


def load_grown(
    module: nn.Module, state: Mapping[str, torch.Tensor], may_add: tuple[str, ...] = ()
) -> None:
    """`module.load_state_dict(state)`, strict except that parameters under the prefixes
    `may_add` may be missing from `state` (they keep their initial values)."""
    if not may_add:
        module.load_state_dict(state, strict=True)
        return
    missing, unexpected = module.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(may_add)]
    if bad or unexpected:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(module).__name__}: "
            f"Missing key(s) in state_dict: {', '.join(repr(k) for k in bad)}. "
            f"Unexpected key(s) in state_dict: {', '.join(repr(k) for k in unexpected)}."
        )


def pack_optimizers(optimizers: dict[str, torch.optim.Optimizer | None]) -> dict[str, torch.Tensor]:
    """Per-parameter optimizer state (e.g. Adam's step and moments) as tensors."""
    out: dict[str, torch.Tensor] = {}
    for name, opt in optimizers.items():
        if opt is None:
            continue
        for idx, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                out[f"opt.{name}.{idx}.{key}"] = t.detach().cpu().contiguous()
    return out


def unpack_optimizers(
    tensors: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer | None]
) -> None:
    """Restore optimizer state written by `pack_optimizers`; groups come from the live optimizer."""
    for name, opt in optimizers.items():
        if opt is None:
            continue
        prefix = f"opt.{name}."
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                idx, field = key[len(prefix) :].split(".", 1)
                state.setdefault(int(idx), {})[field] = value.clone()
        sd = opt.state_dict()
        sd["state"] = state
        opt.load_state_dict(sd)
