"""Losses: one signature, the quasi-norm's robustness, the frozen encoder, the objective."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_srgan_sqe import losses
from napari_srgan_sqe.config import DiscriminatorConfig, LossConfig, generator_preset, loss_preset
from napari_srgan_sqe.degradation import degrade_torch
from napari_srgan_sqe.io.checkpoints import write_safetensors
from napari_srgan_sqe.models.autoencoder import Autoencoder
from napari_srgan_sqe.models.discriminator import build_discriminator
from napari_srgan_sqe.models.generator import build_generator


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_quasi_norm_at_q2_is_mse_plus_eps() -> None:
    pred, target = (
        torch.rand(2, 3, 8, 8, dtype=torch.float64),
        torch.rand(2, 3, 8, 8, dtype=torch.float64),
    )
    for eps in (1e-4, 0.3):
        lq = losses.quasi_norm_loss(pred, target, q=2.0, eps=eps)
        assert torch.allclose(lq, losses.mse_loss(pred, target) + eps, rtol=0, atol=1e-14)


def test_quasi_norm_gradient_shrinks_on_outliers() -> None:
    q, eps = 0.8, 1e-4
    target = torch.zeros(4, dtype=torch.float64)
    residuals = torch.tensor([0.01, 0.05, 0.1, 0.9], dtype=torch.float64)  # last one: outlier
    p1 = residuals.clone().requires_grad_(True)
    losses.quasi_norm_loss(p1, target, q=q, eps=eps).backward()
    p2 = residuals.clone().requires_grad_(True)
    losses.mse_loss(p2, target).backward()
    ratio = p1.grad / p2.grad
    expected = q * (residuals**2 + eps) ** (q / 2 - 1) / 2
    assert torch.allclose(ratio, expected, rtol=1e-10)
    assert ratio[-1] < 0.5 and torch.all(ratio[1:] < ratio[:-1])  # the outlier pulls least
    assert float(p1.grad[-1]) < float(p1.grad[-2] * 9)  # sub-linear: 9x residual, < 9x pull


def _encoder() -> torch.nn.Module:
    return Autoencoder(channels=[8, 4], blocks_per_stage=1).encoder


LOSSES = {
    "quasi": (losses.quasi_norm_loss, {}, True),
    "l1": (losses.l1_loss, {}, True),
    "mse": (losses.mse_loss, {}, True),
    "ssim": (losses.ssim_loss, {}, False),
    "manifold": (losses.manifold_loss, {"encoder": "ENC"}, True),
    "discriminator": (losses.discriminator_loss, {}, False),
    "adversarial": (losses.generator_adversarial_loss, {}, False),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_every_loss_takes_reduction(name: str, reduction: str) -> None:
    fn, params, _ = LOSSES[name]
    params = {k: (_encoder() if v == "ENC" else v) for k, v in params.items()}
    if name in {"discriminator", "adversarial"}:
        pred, target = torch.randn(4), torch.randn(4)
    else:
        pred, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = fn(pred, target, reduction=reduction, **params)
    none = fn(pred, target, reduction="none", **params)
    if reduction == "none":
        assert out.ndim >= 1
    else:
        assert out.ndim == 0
        ref = none.mean() if reduction == "mean" else none.sum()
        assert torch.allclose(out, ref)


def test_reduction_typo_is_refused() -> None:
    with pytest.raises(ValueError, match="reduction"):
        losses.l1_loss(torch.zeros(2), torch.zeros(2), reduction="avg")


def test_ssim_loss_and_adversarial_values() -> None:
    x = torch.rand(2, 3, 24, 24)
    assert float(losses.ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.ssim_loss(x, torch.rand(2, 3, 24, 24))) > 1.0  # 3 channels, low SSIM
    zeros = torch.zeros(3)
    assert float(losses.discriminator_loss(zeros, zeros)) == pytest.approx(2 * np.log(2))
    logits = torch.tensor([-2.0, 0.0, 3.0])
    expected = -torch.log(torch.sigmoid(logits)).mean()
    assert float(losses.generator_adversarial_loss(logits)) == pytest.approx(
        float(expected), rel=1e-6
    )


def test_manifold_loss_grads_reach_pred_not_encoder() -> None:
    enc = _encoder()
    pred = torch.rand(1, 3, 16, 16, requires_grad=True)
    loss = losses.manifold_loss(pred, torch.rand(1, 3, 16, 16), encoder=enc, q=0.8)
    loss.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.requires_grad for p in enc.parameters())  # the caller's module is untouched


def test_variants_come_from_one_objective() -> None:
    enc = _encoder()
    sr = torch.rand(2, 3, 16, 16, requires_grad=True)
    hr, logits = torch.rand(2, 3, 16, 16), torch.randn(2)
    expected = {
        "srgan_sqe": {"fidelity", "manifold", "ssim", "adversarial"},
        "srgan_qe": {"fidelity", "manifold", "adversarial"},
        "srgan_e": {"fidelity", "manifold", "adversarial"},
        "l1": {"fidelity"},
        "bicubic": set(),
    }
    for variant, terms in expected.items():
        cfg = loss_preset(variant)
        total, parts = losses.GeneratorObjective(cfg, encoder=enc)(sr, hr, logits)
        assert set(parts) - {"total"} == terms, variant
        weights = {
            "fidelity": cfg.lam_q,
            "manifold": cfg.lam_e,
            "ssim": cfg.lam_s,
            "adversarial": cfg.lam_a,
        }
        assert float(total.detach()) == pytest.approx(
            sum(weights[k] * float(parts[k]) for k in terms), rel=1e-5
        )
    # q=2 variants: fidelity is MSE + eps.
    _, parts = losses.GeneratorObjective(loss_preset("srgan_e"), encoder=enc)(sr, hr, logits)
    assert float(parts["fidelity"]) == pytest.approx(
        float(losses.mse_loss(sr.detach(), hr)) + 1e-4, rel=1e-5
    )


def test_srgan_without_vgg_says_so(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="napari_srgan_sqe.losses"):
        obj = losses.GeneratorObjective(loss_preset("srgan"))
    assert "WITHOUT the VGG content term" in caplog.text
    _, parts = obj(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.randn(1))
    assert set(parts) == {"fidelity", "adversarial", "total"}


def test_srgan_with_local_vgg_file(tmp_path) -> None:
    vgg = losses.VGG19Features()
    keys = [k for k in vgg.state_dict() if k.startswith("features.")]
    assert keys[0] == "features.0.weight" and keys[-1] == "features.34.bias"  # torchvision layout
    write_safetensors(tmp_path / "vgg19.safetensors", vgg.state_dict(), {})
    cfg = loss_preset("srgan").model_copy(
        update={"vgg_weights": str(tmp_path / "vgg19.safetensors")}
    )
    obj = losses.GeneratorObjective(cfg)
    sr = torch.rand(1, 3, 32, 32, requires_grad=True)
    total, parts = obj(sr, torch.rand(1, 3, 32, 32), torch.randn(1))
    assert "vgg" in parts
    total.backward()
    assert sr.grad is not None and all(p.grad is None for p in obj.vgg.parameters())


def _real_hr_patch(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        hr = np.asarray(im.convert("RGB"))[400:464, 400:464]
    return torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255


def test_srgan_sqe_objective_decreases_on_a_real_patch(he_png: Path) -> None:
    hr = _real_hr_patch(he_png)
    lr = degrade_torch(hr, 4)
    gen = build_generator(generator_preset("tiny"))
    ae = Autoencoder(channels=[8, 4], blocks_per_stage=0)
    disc = build_discriminator(DiscriminatorConfig(channels=[8, 16]))
    cfg = loss_preset("srgan_sqe")
    obj = losses.GeneratorObjective(cfg, encoder=ae.encoder)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)

    def l_g() -> float:
        with torch.no_grad():
            sr = gen(lr)
            return float(obj(sr, hr, disc(sr))[0])

    start = l_g()
    for _ in range(30):
        sr = gen(lr)
        opt_d.zero_grad()
        losses.discriminator_loss(disc(hr), disc(sr.detach())).backward()
        opt_d.step()
        opt_g.zero_grad()
        total, _ = obj(sr, hr, disc(sr))
        total.backward()
        opt_g.step()
    assert l_g() < 0.9 * start


def test_loss_config_fidelity_l1() -> None:
    obj = losses.GeneratorObjective(LossConfig(fidelity="l1", lam_e=0, lam_s=0, lam_a=0))
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert float(obj(a, b)[0]) == pytest.approx(float(losses.l1_loss(a, b)))
