"""Losses of the generator objective (SPEC section 3), all with one signature.

Every loss is `fn(pred, target, *, reduction="mean" | "sum" | "none", **params)`, so
they compose and are tested alike. `GeneratorObjective` weighs them from a
`LossConfig`; the paper's variants (srgan, srgan_e, srgan_qe, srgan_sqe, bicubic)
are `config.loss_preset(variant)`, not separate code paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from napari_srgan_sqe.config import LossConfig
from napari_srgan_sqe.metrics import ssim_torch_per_channel

__all__ = [
    "GeneratorObjective",
    "VGG19Features",
    "discriminator_loss",
    "generator_adversarial_loss",
    "l1_loss",
    "load_vgg19",
    "manifold_loss",
    "mse_loss",
    "quasi_norm_loss",
    "ssim_loss",
    "vgg_content_loss",
]

log = logging.getLogger(__name__)
_REDUCTIONS = ("mean", "sum", "none")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def quasi_norm_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    q: float = 0.8,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Robust fidelity L_Q = mean((r^2 + eps)^(q/2)), r = pred - target.

    q = 2 is MSE + eps; q < 1 has heavy tails: the gradient q r (r^2 + eps)^(q/2 - 1)
    shrinks for large residuals, so outliers (bad staining, debris) pull less.
    """
    r = pred - target
    return _reduce((r * r + eps) ** (q / 2), reduction)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error."""
    return _reduce((pred - target).abs(), reduction)


def mse_loss(pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error."""
    return _reduce((pred - target) ** 2, reduction)


def ssim_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Perception loss L_S = sum over channels of (1 - mean SSIM_c), per image (N,).

    Single scale, Gaussian window, population covariance, valid region; differentiable.
    """
    per_image = (1.0 - ssim_torch_per_channel(pred, target, window=window, sigma=sigma)).sum(1)
    return _reduce(per_image, reduction)


def _frozen_call(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """encoder(x) with detached parameters: gradients reach x, never the encoder."""
    params = {k: v.detach() for k, v in encoder.named_parameters()}
    params.update(dict(encoder.named_buffers()))
    return torch.func.functional_call(encoder, params, (x,))


def manifold_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    encoder: nn.Module,
    q: float = 0.8,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Robust manifold loss L_E = L_Q(E(pred) - E(target)) through a frozen encoder E."""
    with torch.no_grad():
        z_target = encoder(target)
    return quasi_norm_loss(_frozen_call(encoder, pred), z_target, reduction=reduction, q=q, eps=eps)


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """D's loss: BCE of HR -> 1 and SR -> 0 (the KL to the one-hot labels).

    'none' gives the per-pair sum (N,); 'mean' = mean real term + mean fake term.
    """
    real = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits), reduction="none"
    )
    fake = F.binary_cross_entropy_with_logits(
        fake_logits, torch.zeros_like(fake_logits), reduction="none"
    )
    return _reduce(real + fake, reduction)


def generator_adversarial_loss(
    fake_logits: torch.Tensor, target: torch.Tensor | None = None, *, reduction: str = "mean"
) -> torch.Tensor:
    """Non-saturating L_A = -log D(SR) = softplus(-logit); `target` is unused."""
    return _reduce(F.softplus(-fake_logits), reduction)


# ----------------------------------------------------------------------------- VGG19
_VGG19: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
]
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG19 convolutions up to relu5_4, laid out like torchvision's `features.N`,
    so a torchvision-style state dict (saved as safetensors) loads directly."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG19:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.register_buffer(
            "mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


def load_vgg19(path: str | Path) -> VGG19Features:
    """VGG19 features from a local .safetensors file (keys `features.N.weight|bias`)."""
    from napari_srgan_sqe.io.checkpoints import read_safetensors

    tensors, _ = read_safetensors(path)
    model = VGG19Features()
    wanted = model.state_dict()
    state = {k: v for k, v in tensors.items() if k in wanted}
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(f"{path}: not VGG19 weights (missing {', '.join(missing[:4])} ...)")
    model.load_state_dict(state)
    return model.requires_grad_(False).eval()


def vgg_content_loss(
    pred: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean", vgg: nn.Module
) -> torch.Tensor:
    """SRGAN's VGG54 content loss: MSE between relu5_4 features (frozen VGG19)."""
    with torch.no_grad():
        f_target = vgg(target)
    return mse_loss(_frozen_call(vgg, pred), f_target, reduction=reduction)


# ----------------------------------------------------------------------------- objective
class GeneratorObjective:
    """L_G = lam_Q L_fid + lam_E L_E + lam_S L_S + lam_A L_A (+ lam_vgg L_vgg).

    A term is skipped when its weight is 0 or its input is absent (no encoder, no
    discriminator logits, no VGG weights - the last one is logged as a warning).
    `__call__(sr, hr, fake_logits)` returns the total and the detached unweighted terms.
    """

    def __init__(
        self,
        loss_cfg: LossConfig,
        *,
        encoder: nn.Module | None = None,
        vgg: nn.Module | None = None,
    ) -> None:
        self.cfg = loss_cfg
        self.encoder = encoder  # called with detached parameters: it never trains here
        if loss_cfg.lam_e > 0 and encoder is None:
            log.warning(
                "lam_e=%g but no encoder was given: training without the manifold term",
                loss_cfg.lam_e,
            )
        if vgg is None and loss_cfg.lam_vgg > 0:
            if loss_cfg.vgg_weights:
                vgg = load_vgg19(loss_cfg.vgg_weights)
            else:
                log.warning(
                    "no VGG19 weights file given (LossConfig.vgg_weights): the srgan objective "
                    "runs WITHOUT the VGG content term"
                )
        self.vgg = vgg
        fid: Callable[..., torch.Tensor]
        if loss_cfg.fidelity == "l1":
            fid = l1_loss
        else:

            def fid(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return quasi_norm_loss(p, t, q=loss_cfg.q, eps=loss_cfg.eps)

        self._fidelity = fid

    def to(self, device: torch.device | str) -> GeneratorObjective:
        """Move the encoder and VGG to `device`."""
        if self.encoder is not None:
            self.encoder.to(device)
        if self.vgg is not None:
            self.vgg.to(device)
        return self

    def __call__(
        self, sr: torch.Tensor, hr: torch.Tensor, fake_logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        terms: dict[str, torch.Tensor] = {}
        total = sr.new_zeros(())
        if c.lam_q > 0:
            terms["fidelity"] = self._fidelity(sr, hr)
            total = total + c.lam_q * terms["fidelity"]
        if c.lam_e > 0 and self.encoder is not None:
            terms["manifold"] = manifold_loss(
                sr, hr, encoder=self.encoder, q=c.q_manifold, eps=c.eps
            )
            total = total + c.lam_e * terms["manifold"]
        if c.lam_s > 0:
            terms["ssim"] = ssim_loss(sr, hr, window=c.ssim_window, sigma=c.ssim_sigma)
            total = total + c.lam_s * terms["ssim"]
        if c.lam_a > 0 and fake_logits is not None:
            terms["adversarial"] = generator_adversarial_loss(fake_logits)
            total = total + c.lam_a * terms["adversarial"]
        if c.lam_vgg > 0 and self.vgg is not None:
            terms["vgg"] = vgg_content_loss(sr, hr, vgg=self.vgg)
            total = total + c.lam_vgg * terms["vgg"]
        out = {k: v.detach() for k, v in terms.items()}
        out["total"] = total.detach()
        return total, out
