"""The scanner degradation, lossy LR coding and evaluation on compressed LR.

Images come from the bundled sample slide (real H&E), so these tests run in a clone
without ../shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_srgan_sqe.config import (
    ConfigError,
    DegradationConfig,
    TrainConfig,
    load_config,
    validate,
)
from napari_srgan_sqe.degradation import (
    ScannerDraw,
    apply_scanner,
    degrade,
    degrade_with,
    draw_scanner,
)
from napari_srgan_sqe.io import codecs
from napari_srgan_sqe.metrics import psnr
from napari_srgan_sqe.models.blocks import bicubic_upscale
from napari_srgan_sqe.training.data import PatchSampler

SAMPLE_SVS = (
    Path(__file__).resolve().parents[1] / "src/napari_srgan_sqe/data/CMU-1-Small-Region.svs"
)

OFF = {"blur": False, "noise": False, "jpeg_fraction": 0.0, "jpeg2000_fraction": 0.0}


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    """A 320 x 320 tissue region of the bundled sample slide (uint8 RGB)."""
    import openslide

    with openslide.OpenSlide(str(SAMPLE_SVS)) as s:
        region = s.read_region((800, 1200), 0, (320, 320)).convert("RGB")
    return np.asarray(region)


def scanner(**kw) -> DegradationConfig:
    return DegradationConfig(preset="scanner", **kw)


def test_scanner_chain_is_deterministic_for_a_seed(he):
    a = degrade_with(he, "scanner", 4, seed=7)
    b = degrade_with(he, "scanner", 4, seed=7)
    assert a.shape == (80, 80, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    draws = {draw_scanner("scanner", 4, np.random.default_rng(s)) for s in range(40)}
    assert len(draws) == 40
    assert {d.codec for d in draws} == {"none", "jpeg", "jpeg2000"}
    assert not np.array_equal(a, degrade_with(he, "scanner", 4, seed=8))


def test_clean_preset_is_d_s_and_every_scanner_stage_switches_off(he):
    assert np.array_equal(degrade_with(he, "clean", 4), degrade(he, 4))
    # all stages off: D_s, rounded to 8 bit
    assert np.array_equal(degrade_with(he, scanner(**OFF), 4, seed=3), degrade(he, 4))
    # blur on (drawn sigma), the rest off: only the blur differs from D_s
    blurred = degrade_with(he, scanner(**{**OFF, "blur": True}), 4, seed=3)
    assert not np.array_equal(blurred, degrade(he, 4))
    # an isotropic blur at exactly D_s's sigma is D_s
    same = scanner(**{**OFF, "blur": True, "blur_factor": (1.0, 1.0), "anisotropy": 0.0})
    assert np.array_equal(degrade_with(he, same, 4, seed=3), degrade(he, 4))
    # noise on: zero-mean, at the drawn level
    cfg = scanner(**{**OFF, "noise": True, "noise_sigma": (0.02, 0.02), "noise_shot": (0.0, 0.0)})
    diff = degrade_with(he, cfg, 4, seed=3).astype(float) - degrade(he, 4).astype(float)
    assert abs(diff.mean()) < 0.3 and diff.std() == pytest.approx(0.02 * 255, rel=0.1)


def test_wider_blur_is_smoother(he):
    def grad_energy(img):
        return float(np.abs(np.diff(img.astype(float), axis=1)).mean())

    sharp = degrade_with(he, scanner(**{**OFF, "blur": True, "blur_factor": (0.7, 0.7)}), 4)
    soft = degrade_with(he, scanner(**{**OFF, "blur": True, "blur_factor": (1.5, 1.5)}), 4)
    assert grad_energy(soft) < 0.9 * grad_energy(sharp)


@pytest.mark.parametrize("quality", [30, 75, 95])
@pytest.mark.parametrize("colour", ["ycbcr420", "rgb"])
def test_jpeg_is_applied_at_the_asked_quality(he, quality, colour):
    lr = degrade(he, 4)
    data = codecs.encode_jpeg(lr, quality, colour)
    tables = codecs.jpeg_quant_tables(data)
    assert codecs.jpeg_quality(data) == quality
    assert np.array_equal(tables[0], codecs._ijg_table(quality))
    # the chain with JPEG forced at that quality holds exactly those decoded pixels
    cfg = scanner(**{**OFF, "jpeg_fraction": 1.0, "jpeg_quality": (quality, quality),
                     "jpeg_colours": [colour]})  # fmt: skip
    coded = degrade_with(he, cfg, 4, seed=1)
    assert np.array_equal(coded, codecs.decode(data))
    assert not np.array_equal(coded, lr)
    # Pillow decodes the same stream to nearly the same pixels (IDCT rounding aside)
    from io import BytesIO

    pil = np.asarray(Image.open(BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(pil - coded.astype(int)).mean() < 1.0


def test_lower_quality_loses_more(he):
    lr = degrade(he, 4)
    errs = [psnr(codecs.code_image(lr, "jpeg", q), lr) for q in (95, 75, 50, 30)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] - 5


def test_jpeg2000_meets_its_compression_ratio(he):
    lr = degrade(he, 4)
    quality = []
    for ratio in (10.0, 17.0, 30.0):
        data = codecs.encode_jpeg2000(lr, ratio)
        body = len(data) - data.find(b"\xff\x90")  # without the main header
        assert body <= lr.nbytes / ratio
        assert body > lr.nbytes / ratio * 0.6  # spends most of its budget
        assert psnr(codecs.decode(data), lr) > 20
        quality.append(psnr(codecs.decode(data), lr))
    assert quality == sorted(quality, reverse=True)
    with pytest.raises(ValueError, match="above 1"):
        codecs.encode_jpeg2000(lr, 0.5)


def test_torch_and_dask_paths_follow_the_numpy_definition(he):
    import dask.array as da

    batch = torch.from_numpy(np.stack([he, he[::-1]]).astype(np.float32) / 255).permute(0, 3, 1, 2)
    lr = degrade_with(batch, "scanner", 4, seed=5)
    assert lr.shape == (2, 3, 80, 80) and lr.dtype == torch.float32
    for i, img in enumerate(batch.permute(0, 2, 3, 1).numpy()):
        rng = np.random.default_rng([5, i])
        want = apply_scanner(img.astype(np.float64), 4, draw_scanner("scanner", 4, rng), rng)
        assert np.allclose(lr[i].permute(1, 2, 0).numpy(), want)
    # dask: one draw for the image, lazily; same seed, same pixels
    lazy = degrade_with(da.from_array(he, chunks=(128, 128, 3)), "scanner", 4, seed=2)
    assert lazy.shape == (80, 80, 3) and lazy.dtype == np.uint8
    assert np.array_equal(lazy.compute(), lazy.compute())
    # with every random stage off, the lazy chain is D_s
    off = degrade_with(da.from_array(he, chunks=(128, 128, 3)), scanner(**OFF), 4)
    assert np.array_equal(off.compute(), degrade(he, 4))


def test_unknown_presets_and_bad_ranges_are_refused(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": ["x"], "degradation": "phone-camera"}))
    with pytest.raises(ConfigError, match="degradation"):
        load_config(path)
    path.write_text(json.dumps({"data": ["x"], "degradation": {"preset": "scanner",
                                "jpeg_quality": [95, 30]}}))  # fmt: skip
    with pytest.raises(ConfigError, match="jpeg_quality"):
        load_config(path)
    path.write_text(json.dumps({"data": ["x"], "degradation": {"preset": "scanner",
                                "jpeg_fraction": 0.8, "jpeg2000_fraction": 0.5}}))  # fmt: skip
    with pytest.raises(ConfigError, match="exceeds 1"):
        load_config(path)
    assert TrainConfig(data=["x"], degradation="scanner").degradation.preset == "scanner"
    with pytest.raises(ConfigError, match="unknown degradation preset"):
        degrade_with(np.zeros((8, 8, 3), np.uint8), "phone-camera")


def test_sampler_makes_scanner_lr_at_both_magnifications(he):
    cfg = scanner()
    sampler = PatchSampler([he, he[::-1].copy()], patch_size=64, batch_size=6, seed=1,
                           degradation=cfg, scale=4, lower_mag_fraction=0.5)  # fmt: skip
    a, b = sampler.batch(3), sampler.batch(3)
    assert a.lr.shape == (6, 3, 16, 16) and a.hr.shape == (6, 3, 64, 64)
    assert np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr)
    assert not np.array_equal(a.lr, sampler.batch(4).lr)
    # every LR value is an 8-bit level (stored pixels)
    assert np.allclose(a.lr * 255, np.round(a.lr * 255), atol=1e-4)
    # the LR sits on its HR: D_s of the HR is close to the scanner LR
    for hr, lr in zip(a.hr, a.lr):
        ref = degrade(hr.transpose(1, 2, 0).astype(np.float64), 4)
        assert psnr(lr.transpose(1, 2, 0), ref) > 22
    # patches too large for the images, scanner margin included
    with pytest.raises(Exception, match="larger than"):
        PatchSampler([he[:90, :90].copy()], patch_size=64, batch_size=1,
                     degradation=cfg)  # fmt: skip
    # half magnification needs twice the side: no image that large is an error ...
    with pytest.raises(Exception, match="half-magnification"):
        PatchSampler([he[:150, :150].copy()], patch_size=64, batch_size=1,
                     degradation=cfg, lower_mag_fraction=0.5)  # fmt: skip
    # ... and a small image among large ones gives full-magnification patches only
    small = np.full((100, 100, 3), 7, np.uint8)  # flat: its patches are recognisable
    mixed = PatchSampler([small, he], patch_size=64, batch_size=8, seed=2,
                         degradation=scanner(**OFF), lower_mag_fraction=1.0)  # fmt: skip
    flat = 0
    for step in range(6):
        for hr in mixed.batch(step).hr:
            if np.ptp(hr) < 1e-6:  # a patch of the small image, drawn at full magnification
                flat += 1
                assert np.allclose(hr, 7 / 255)
    assert flat > 0


def test_draw_is_frozen_and_records_the_coding():
    d = draw_scanner(scanner(**{**OFF, "jpeg_fraction": 1.0, "jpeg_quality": (60, 60)}), 4,
                     np.random.default_rng(0))  # fmt: skip
    assert isinstance(d, ScannerDraw) and d.codec == "jpeg" and d.quality == 60


def test_evaluate_on_jpeg_lr_equals_hand_computation(he, tmp_path: Path, capsys):
    from napari_srgan_sqe.cli import main

    data = tmp_path / "hr"
    data.mkdir()
    imgs = [he[:256, :256], he[64:, 64:]]
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(data / f"img{i}.png")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", "bicubic-x4", "--data", str(data), "--no-lanczos",
            "--lr-codec", "jpeg", "--lr-quality", "75", "--lr-codec", "none", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "LR: jpeg-q75" in text and "LR: lossless" in text
    rows = json.loads((out / "evaluation.json").read_text())["rows"]
    for i, img in enumerate(imgs):
        lr = np.asarray(Image.open(_jpeg_file(degrade(img, 4), tmp_path / f"{i}.jpg")))
        want = psnr(bicubic_upscale(lr, 4), img)
        got = [r for r in rows if r["image"] == f"img{i}.png" and r["lr"] == "jpeg-q75"]
        assert {r["method"] for r in got} == {"bicubic", "bicubic-x4"}
        for r in got:
            assert r["psnr"] == pytest.approx(want, abs=0.05)  # libjpeg vs Pillow's IDCT
        lossless = [r for r in rows if r["image"] == f"img{i}.png" and r["lr"] == "lossless"]
        assert lossless[0]["psnr"] > got[0]["psnr"]
    assert set(json.loads((out / "evaluation.json").read_text())["by_lr"]) == {
        "jpeg-q75",
        "lossless",
    }
    base = ["evaluate", "--model", "bicubic-x4", "--data", str(data)]
    assert main([*base, "--lr-quality", "75"]) == 2  # a quality with no JPEG asked for
    assert "--lr-quality needs --lr-codec jpeg" in capsys.readouterr().err
    assert main([*base, "--lr-codec", "jpeg", "--lr-quality", "high"]) == 2
    assert "not a number" in capsys.readouterr().err
    assert main([*base, "--lr-codec", "jpeg", "--lr-quality", "0"]) == 2
    assert "1..100" in capsys.readouterr().err


def _jpeg_file(lr: np.ndarray, path: Path) -> Path:
    """LR saved as a JPEG file by Pillow at quality 75 with 4:2:0, as a user would."""
    Image.fromarray(lr).save(path, quality=75, subsampling=2)
    return path


def test_self_supervised_pseudo_pairs_take_the_preset(he):
    """With the scanner preset the pseudo-LR is coded like the slide (JPEG levels, not
    D_s), in the held-out stripes and in every training input; clean stays D_s."""
    from napari_srgan_sqe.config import FinetuneConfig
    from napari_srgan_sqe.training import finetune as ft
    from napari_srgan_sqe.training.regions import prepare

    lr = degrade(he, 4)  # an 80 x 80 LR region
    jpeg = {"preset": "scanner", **OFF, "jpeg_fraction": 1.0, "jpeg_quality": (40, 40),
            "jpeg_colours": ["ycbcr420"]}  # fmt: skip
    cfg = FinetuneConfig(mode="self-supervised", patch_size=32, degradation=jpeg)
    data = prepare([lr], None, "self-supervised", cfg, 4)
    pseudo_in, stripe = data.val[0]
    assert np.array_equal((pseudo_in * 255).round().astype(np.uint8),
                          codecs.code_image(degrade(stripe, 4), "jpeg", 40))  # fmt: skip
    clean = prepare(
        [lr],
        None,
        "self-supervised",
        cfg.model_copy(update={"degradation": DegradationConfig()}),
        4,
    )
    assert np.array_equal((clean.val[0][0] * 255).round().astype(np.uint8), degrade(stripe, 4))

    seen = []

    class Spy(torch.nn.Module):
        scale = 4

        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest") * self.w

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

    gen = Spy()
    from napari_srgan_sqe.losses import GeneratorObjective

    batch = (
        np.stack([he[:64, :64], he[64:128, :64]]).transpose(0, 3, 1, 2).astype(np.float32) / 255,
    ) * 2
    opt = torch.optim.SGD(gen.parameters(), lr=0.0)
    ft._train_step(gen, opt, GeneratorObjective(cfg.loss), batch, "self-supervised", 4,
                   torch.device("cpu"), cfg.degradation, (0, 1))  # fmt: skip
    x = seen[-1].permute(0, 2, 3, 1).numpy()
    want = codecs.code_image(degrade(he[:64, :64], 4), "jpeg", 40)
    assert np.array_equal((x[0] * 255).round().astype(np.uint8), want)


def test_bundled_models_for_scanned_and_lossless_lr():
    """Two bundled 4x models: the default for scanned (lossy) slides, trained on the
    scanner degradation, and one for lossless LR; the default follows the coding."""
    from napari_srgan_sqe import load_model
    from napari_srgan_sqe.models.registry import (
        CLEAN_MODEL,
        DEFAULT_MODEL,
        list_models,
        model_for_coding,
    )

    assert model_for_coding("jpeg") == model_for_coding("jpeg2000") == DEFAULT_MODEL
    assert model_for_coding("unknown") == model_for_coding(None) == DEFAULT_MODEL
    assert model_for_coding("none") == CLEAN_MODEL
    listed = {m["name"]: m for m in list_models()}
    assert listed[DEFAULT_MODEL]["available"] and listed[CLEAN_MODEL]["available"]
    scanner_model, clean_model = load_model(DEFAULT_MODEL), load_model(CLEAN_MODEL)
    assert scanner_model.name == DEFAULT_MODEL and clean_model.name == CLEAN_MODEL
    assert scanner_model.metadata["degradation"] == "scanner"
    assert clean_model.metadata["degradation"] == "clean"
    assert scanner_model.identity != clean_model.identity
    assert scanner_model.scale == clean_model.scale == 4


def test_training_on_the_scanner_preset_resumes_exactly_and_records_it(he, tmp_path: Path):
    """A run on the scanner preset with half-magnification patches: the generator sees
    the sampler's coded LR, resume is bit-exact, validation is on JPEG Q75, and the
    written model says which degradation it was trained on."""
    from napari_srgan_sqe import load_model
    from napari_srgan_sqe.training.trainer import Trainer, validation_lr

    data = tmp_path / "hr"
    data.mkdir()
    Image.fromarray(he).save(data / "a.png")
    Image.fromarray(he[::-1, ::-1].copy()).save(data / "b.png")

    def cfg(out: str) -> TrainConfig:
        return TrainConfig(
            data=[str(data)],
            val_data=[str(data / "a.png")],
            model={"generator": {"arch": "lrnet", "n_blocks": 1, "channels": 8}},
            loss={"lam_e": 0.0, "lam_s": 0.1, "lam_a": 0.0},
            degradation="scanner",
            lower_mag_fraction=0.5,
            patch_size=32,
            batch_size=2,
            ae_steps=0,
            warmup_steps=3,
            gan_steps=3,
            val_every=3,
            checkpoint_every=100,
            val_crop=64,
            out_dir=str(tmp_path / out),
        )

    straight = Trainer(cfg("a"))
    straight.run()
    first = Trainer(cfg("b"))
    first.run(max_steps=4)
    resumed = Trainer(cfg("b"))
    resumed.run(resume=True)
    for key, value in straight.recipe.G.state_dict().items():
        assert torch.equal(value, resumed.recipe.G.state_dict()[key]), key
    hr = straight.val_images[0]
    assert np.array_equal(straight.val_lr[0], codecs.code_image(degrade(hr, 4), "jpeg", 75))
    assert np.array_equal(validation_lr(hr, cfg("c")), straight.val_lr[0])
    model = load_model(tmp_path / "b" / "model.safetensors")
    assert model.metadata["degradation"] == "scanner"
    # a run on the clean preset is refused a resume on the scanner preset
    with pytest.raises(ConfigError, match="degradation"):
        Trainer(cfg("b").model_copy(update={"degradation": DegradationConfig()})).run(resume=True)


def test_stain_jitter_varies_the_stain_not_the_structure(he):
    from napari_srgan_sqe.training.data import HED_FROM_RGB, stain_jitter

    patch = he[:128, :128].astype(np.float32) / 255.0
    assert stain_jitter(patch, 0.0, np.random.default_rng(0)) is patch
    a = stain_jitter(patch, 0.2, np.random.default_rng(5))
    assert np.array_equal(a, stain_jitter(patch, 0.2, np.random.default_rng(5)))
    assert a.dtype == patch.dtype and a.shape == patch.shape and 0 <= a.min() <= a.max() <= 1

    def conc(x: np.ndarray) -> np.ndarray:  # H, E, residual per pixel
        return (-np.log(np.clip(x.astype(np.float64), 1 / 255, 1))) @ HED_FROM_RGB

    # each stain's concentration is an affine function of the original's, with a slope
    # within 1 +- 0.2, so the tissue keeps its structure while the stain changes
    c0, c1 = conc(patch).reshape(-1, 3), conc(a).reshape(-1, 3)
    dark = patch.reshape(-1, 3).min(axis=1) > 2 / 255  # away from the clipping floor
    for k in range(3):
        slope, _ = np.polyfit(c0[dark, k], c1[dark, k], 1)
        assert 0.8 - 1e-3 <= slope <= 1.2 + 1e-3
    assert np.corrcoef(patch.mean(axis=2).ravel(), a.mean(axis=2).ravel())[0, 1] > 0.97
    assert np.abs(a - patch).mean() > 0.005  # the stain did change

    # in the sampler: off by default (batches as before), on: HR and LR share the stain
    cfg = scanner()
    plain = PatchSampler([he], patch_size=64, batch_size=4, seed=2, degradation=cfg)
    off = PatchSampler([he], patch_size=64, batch_size=4, seed=2, degradation=cfg,
                       stain_jitter=0.0)  # fmt: skip
    on = PatchSampler([he], patch_size=64, batch_size=4, seed=2, degradation=cfg,
                      stain_jitter=0.2)  # fmt: skip
    assert np.array_equal(plain.batch(1).hr, off.batch(1).hr)
    b = on.batch(1)
    assert np.array_equal(b.hr, on.batch(1).hr) and not np.array_equal(b.hr, off.batch(1).hr)
    for hr, lr in zip(b.hr, b.lr):
        ref = degrade(hr.transpose(1, 2, 0).astype(np.float64), 4)
        assert psnr(lr.transpose(1, 2, 0), ref) > 22
    with pytest.raises(ConfigError, match="stain_jitter"):
        validate(TrainConfig, {"data": ["x"], "stain_jitter": 0.8})
