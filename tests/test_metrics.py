"""Metrics against independent references (skimage, a direct transcription of SPEC)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from napari_srgan_sqe import metrics
from napari_srgan_sqe.degradation import degrade

IMAGES = ["train-1.png", "train-2.png"]  # of the `he_dir` fixture: real H&E (tests/conftest.py)


def _load(path: Path, size: int = 192, at: int = 300) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))[at : at + size, at : at + size].copy()


def _bicubic_of_degraded(hr: np.ndarray, s: int = 4) -> np.ndarray:
    lr = torch.from_numpy(degrade(hr, s)).permute(2, 0, 1)[None].float() / 255
    up = torch.nn.functional.interpolate(lr, scale_factor=s, mode="bicubic", align_corners=False)
    return up[0].permute(1, 2, 0).clamp(0, 1).numpy()


@pytest.fixture(scope="module", params=IMAGES)
def pair(request, he_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    hr = _load(he_dir / request.param)
    return _bicubic_of_degraded(hr), hr


def test_ssim_matches_skimage(pair) -> None:
    from skimage.metrics import structural_similarity

    est, hr = pair
    ref = structural_similarity(
        est.astype(np.float64),
        hr / 255.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=-1,
    )
    assert metrics.ssim(est, hr) == pytest.approx(ref, abs=1e-3)
    est8 = np.rint(est * 255).astype(np.uint8)
    ref8 = structural_similarity(
        est8 / 255.0,
        hr / 255.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=-1,
    )
    assert metrics.ssim(est8, hr) == pytest.approx(ref8, abs=1e-3)
    # The torch path (training) is the same SSIM.
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    assert float(metrics.ssim_torch(t(est), t(hr / 255.0))) == pytest.approx(ref, abs=1e-4)


def _qilv_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SPEC section 4, transcribed directly: explicit 11 x 11 windows, valid region."""
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    out = []
    for c in range(x.shape[2]):
        stats = []
        for img in (x[..., c], y[..., c]):
            win = sliding_window_view(img.astype(np.float64), (11, 11))
            v = np.einsum("ijkl,kl->ij", win**2, w) - np.einsum("ijkl,kl->ij", win, w) ** 2
            stats.append(v)
        vi, vj = stats
        mi, mj = vi.mean(), vj.mean()
        si, sj = vi.std(ddof=1), vj.std(ddof=1)
        sij = np.mean((vi - mi) * (vj - mj))
        out.append(
            (2 * mi * mj + c1)
            / (mi**2 + mj**2 + c1)
            * (2 * si * sj + c2)
            / (si**2 + sj**2 + c2)
            * (sij + c2 / 2)
            / (si * sj + c2 / 2)
        )
    return float(np.mean(out))


def test_qilv_matches_spec_formula(pair) -> None:
    est, hr = pair
    est, hr = est[:96, :96], hr[:96, :96]
    assert metrics.qilv(est, hr) == pytest.approx(_qilv_reference(est, hr / 255.0), abs=1e-5)


def test_qilv_properties(pair) -> None:
    from scipy.ndimage import gaussian_filter

    est, hr = pair
    x = hr / 255.0
    # Identical images: 1 up to the SPEC's mix of N-1 (std) and N (covariance): 1 - 1/N.
    assert metrics.qilv(hr, hr) == pytest.approx(1.0, abs=1e-3)
    q = [metrics.qilv(gaussian_filter(x, sigma=(s, s, 0)), x) for s in (1, 2, 3)]
    assert metrics.qilv(x, x) > q[0] > q[1] > q[2]  # more blur, lower QILV
    assert q[1] < 0.995
    assert metrics.qilv(est, hr) == pytest.approx(metrics.qilv(hr, est), abs=1e-9)


def test_ms_ssim(pair, monkeypatch) -> None:
    est, hr = pair
    assert sum(metrics.MS_SSIM_WEIGHTS) == pytest.approx(1.0, abs=1e-3)
    assert len(metrics.MS_SSIM_WEIGHTS) == 5
    assert metrics.ms_ssim(hr, hr) == pytest.approx(1.0)
    value = metrics.ms_ssim(est, hr)
    assert metrics.ssim(est, hr) < value < 1.0  # blur hurts fine scales most
    # All weight on the coarsest scale = plain SSIM of the 4x 2x2-pooled images.
    monkeypatch.setattr(metrics, "MS_SSIM_WEIGHTS", (0.0, 0.0, 0.0, 0.0, 1.0))
    pool = lambda a: a.reshape(a.shape[0] // 16, 16, a.shape[1] // 16, 16, 3).mean((1, 3))  # noqa: E731
    assert metrics.ms_ssim(est, hr) == pytest.approx(
        metrics.ssim(pool(est), pool(hr / 255.0)), abs=1e-5
    )


def test_ms_ssim_needs_161_px() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((161, 170, 3))
    metrics.ms_ssim(a, a)
    with pytest.raises(ValueError, match="at least 161 px"):
        metrics.ms_ssim(a[:160], a[:160])
    assert metrics.all_metrics(a[:100], a[:100])["ms_ssim"] is None


def test_psnr_and_rrmse_by_hand() -> None:
    ref = np.full((20, 20, 3), 0.5)
    est = ref.copy()
    est[..., 0] += 0.1  # channel 0: squared error 0.01
    est[..., 1] += 0.01  # channel 1: 1e-4
    est[..., 2] -= 0.001  # channel 2: 1e-6
    # Pooled over all channels: MSE = (0.01 + 1e-4 + 1e-6) / 3, not the mean of 20/40/60 dB.
    mse = (0.01 + 1e-4 + 1e-6) / 3
    assert metrics.psnr(est, ref) == pytest.approx(10 * np.log10(1 / mse))
    assert metrics.psnr(est, ref) < 40.0 - 15  # the per-channel mean would read 40 dB
    assert metrics.rrmse(est, ref) == pytest.approx(np.sqrt(mse) / 0.5)
    assert metrics.psnr(ref, ref) == np.inf and metrics.rrmse(ref, ref) == 0.0
    u8 = np.full((20, 20, 3), 200, np.uint8)
    assert metrics.psnr(u8, u8.astype(np.float32) / 255) == np.inf


def test_psnr_equals_skimage_on_rgb() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    noise = rng.normal(0, [2.0, 9.0, 25.0], hr.shape)  # very different channel errors
    est = np.clip(hr + noise, 0, 255).astype(np.uint8)
    ref_value = peak_signal_noise_ratio(hr, est, data_range=255)
    assert metrics.psnr(est, hr) == pytest.approx(ref_value, abs=1e-4)
    assert metrics.all_metrics(est, hr)["psnr"] == pytest.approx(ref_value, abs=1e-4)


def test_input_validation() -> None:
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.ssim(a, a[:30])
    with pytest.raises(ValueError, match="uint8 or float"):
        metrics.psnr(a.astype(np.uint16), a)
    with pytest.raises(ValueError, match="uint8 or float"):
        metrics.qilv(a, a.astype(np.int32))
    with pytest.raises(ValueError, match="image"):
        metrics.rrmse(np.zeros(5), np.zeros(5))
    gray = np.random.default_rng(0).random((40, 40))
    assert metrics.ssim(gray, gray) == pytest.approx(1.0)


def test_all_metrics_agree_with_single_functions(pair) -> None:
    est, hr = pair
    allm = metrics.all_metrics(est, hr)
    assert allm["ssim"] == pytest.approx(metrics.ssim(est, hr))
    assert allm["qilv"] == pytest.approx(metrics.qilv(est, hr))
    assert allm["ms_ssim"] == pytest.approx(metrics.ms_ssim(est, hr))
    assert allm["psnr"] == pytest.approx(metrics.psnr(est, hr))
    assert allm["rrmse"] == pytest.approx(metrics.rrmse(est, hr))
    x = lambda a: torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    assert float(metrics.psnr_torch(x(est), x(hr / 255.0))) == pytest.approx(allm["psnr"], abs=1e-3)


def test_one_metric_table_drives_all_metrics_evaluate_and_the_readouts():
    """`metrics.METRICS` is the one place a metric is declared: all_metrics computes
    each entry (its fast path agrees with the entry's own function), evaluate's columns
    and the Compare widget's rows, tips, decimals and gain signs come from it."""
    from napari_srgan_sqe.metrics import METRICS, all_metrics, format_metric, metric_gain
    from napari_srgan_sqe.training import evaluate

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (200, 180, 3), dtype=np.uint8)
    est = np.clip(ref.astype(int) + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
    values = all_metrics(est, ref)
    assert list(values) == [m.key for m in METRICS] == list(evaluate.METRICS)
    for m in METRICS:
        assert values[m.key] == pytest.approx(m.fn(est, ref), rel=1e-6), m.key
    small = all_metrics(est[:100, :100], ref[:100, :100])
    assert small["ms_ssim"] is None and format_metric("ms_ssim", None) == "-"
    assert format_metric("psnr", 31.256, signed=True) == "+31.26"
    assert format_metric("ssim", 0.91234) == "0.9123"
    assert metric_gain("psnr", 30.0, 28.5) == pytest.approx(1.5)
    assert metric_gain("rrmse", 0.10, 0.15) == pytest.approx(0.05)  # lower is better
    assert metric_gain("psnr", float("inf"), 28.5) is None


def test_compare_readouts_are_labelled_from_the_metric_table():
    from napari_srgan_sqe.inference import readouts
    from napari_srgan_sqe.metrics import METRICS

    assert readouts.METRICS == tuple((m.key, m.label) for m in METRICS)
    assert readouts.METRIC_TIPS["rrmse"].startswith("Relative root-mean-square")
    gain = readouts.gain({"psnr": 30.0, "rrmse": 0.1}, {"psnr": 29.0, "rrmse": 0.2})
    assert gain["psnr"] == pytest.approx(1.0) and gain["rrmse"] == pytest.approx(0.1)
    assert gain["ssim"] is None
