"""SR3 diffusion: seeds, position-keyed noise, overlap tiling, its training recipe,
exports that record the sample, and clear refusals on deterministic-only paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_srgan_sqe.cli import main
from napari_srgan_sqe.config import ConfigError, TrainConfig
from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.inference.export import enhance_slide
from napari_srgan_sqe.io.pyramid import PROVENANCE_KEY
from napari_srgan_sqe.models.blocks import bicubic_upscale
from napari_srgan_sqe.models.method import StochasticModelError
from napari_srgan_sqe.models.modelfile import load_model, save_model
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.models.sr3 import position_noise
from napari_srgan_sqe.training.finetune import finetune
from napari_srgan_sqe.training.trainer import Trainer
from tiny_runs import TINY_SR3, tiny_sr3, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TINY_SR3


def test_descriptor_says_stochastic_with_overlap_tiling_and_steps():
    desc = tiny_sr3().descriptor
    assert (desc.arch, desc.kind, desc.tiling) == ("sr3", "stochastic", "overlap")
    assert desc.stochastic and desc.steps == 3 and desc.halo == 8
    assert desc.macs_per_pixel > 0


def test_same_seed_same_image_and_two_seeds_two_images(he_crop: np.ndarray):
    model = tiny_sr3()
    lr = np.ascontiguousarray(he_crop[100:160, 200:264])
    a = Predictor(model, device="cpu", seed=1).predict_image(lr)
    b = Predictor(model, device="cpu", seed=1).predict_image(lr)
    c = Predictor(model, device="cpu", seed=2).predict_image(lr)
    assert a.shape == (240, 256, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0
    # a sample stays around the LR's content: close to its bicubic up-sampling on average
    up = bicubic_upscale(lr, 4).astype(float)
    assert abs(a.astype(float).mean() - up.mean()) < 10


def test_starting_noise_depends_only_on_position_and_seed():
    whole = position_noise(7, -40, -24, 160, 130)
    part = position_noise(7, -40 + 37, -24 + 51, 70, 45)
    torch.testing.assert_close(part, whole[:, 37:107, 51:96], rtol=0, atol=0)
    assert not torch.equal(position_noise(8, 0, 0, 32, 32), position_noise(7, 0, 0, 32, 32))
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1.0) < 0.05


def test_tiled_with_overlap_equals_whole_and_shows_no_seams(he_crop: np.ndarray):
    """Windows read with the overlap margin start from the same noise where they overlap,
    so the tiled result equals the whole-image one (here exactly: the tiny network's
    field over its 3 steps is within the margin)."""
    model = tiny_sr3()
    lr = np.ascontiguousarray(he_crop[300:390, 400:500])
    whole = Predictor(model, device="cpu", seed=5).predict_image(lr)
    tiled = np.asarray(super_resolve(lr, model, device="cpu", tile=32, seed=5)[0])
    assert tiled.shape == whole.shape == (360, 400, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    # seam statistic: steps across tile borders are no larger than steps elsewhere
    diff = np.abs(np.diff(tiled.astype(float), axis=1)).mean(axis=(0, 2))
    borders = diff[[32 * 4 * k - 1 for k in (1, 2, 3)]]
    assert borders.mean() < 1.5 * diff.mean()


def test_the_seed_is_part_of_the_engine_cache_key(he_crop: np.ndarray):
    model = tiny_sr3()
    lr = np.ascontiguousarray(he_crop[:64, :64])
    one = super_resolve(lr, model, device="cpu", tile=32, seed=1)
    two = super_resolve(lr, model, device="cpu", tile=32, seed=2, predictor=None)
    assert one.seed == 1 and two.seed == 2
    assert not np.array_equal(np.asarray(one[0]), np.asarray(two[0]))


def test_model_file_round_trip_keeps_the_samples(tmp_path: Path, he_crop: np.ndarray):
    model = tiny_sr3()
    loaded = load_model(save_model(model, tmp_path / "sr3.safetensors"))
    assert loaded.descriptor == model.descriptor
    assert loaded.metadata["kind"] == "stochastic"
    x = torch.rand(1, 3, 16, 20)
    with torch.no_grad():
        assert torch.equal(loaded.infer_batch(x, seed=4), model.infer_batch(x, seed=4))


def test_export_records_the_model_and_the_seed(tmp_path: Path, he_crop: np.ndarray):
    model = tiny_sr3()
    lr = np.ascontiguousarray(he_crop[:64, :96])
    from PIL import Image

    src = tmp_path / "lr.png"
    Image.fromarray(lr).save(src)
    outs = {}
    for seed in (3, 4):
        out = enhance_slide(
            src, tmp_path / f"sr{seed}.ome.zarr", model=model, seed=seed, tile=32, mpp=0.5
        )
        attrs = dict(zarr.open_group(str(out), mode="r").attrs)
        assert attrs[PROVENANCE_KEY]["seed"] == str(seed)
        assert attrs[PROVENANCE_KEY]["model"] == "tiny-sr3"
        assert attrs[PROVENANCE_KEY]["sampling_steps"] == "3"
        outs[seed] = np.asarray(zarr.open_group(str(out), mode="r")["0"])
    assert not np.array_equal(outs[3], outs[4])  # two seeds, two samples


def test_diffusion_recipe_trains_on_real_crops_and_resumes_exactly(crops: Path, tmp_path: Path):
    def cfg(out: Path) -> TrainConfig:
        return tiny_train_config(
            crops,
            out,
            model={"name": "sr3-tiny", "variant": "sr3", "generator": TINY.model_dump()},
            recipe="auto",
            steps=6,
            ema_decay=0.9,
            lr=1e-3,
            val_every=3,
        )

    straight = Trainer(cfg(tmp_path / "a"))
    assert straight.recipe.name == "diffusion" and straight.total == 6
    model = straight.run()
    assert model.metadata["recipe"] == "diffusion"
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(r["phase"] == "diffusion" for r in log) and "val_psnr" in log[-1]
    assert np.isfinite([r["v_mse"] for r in log if "v_mse" in r]).all()
    first = Trainer(cfg(tmp_path / "b"))
    first.run(max_steps=4)
    resumed = Trainer(cfg(tmp_path / "b"))
    resumed.run(resume=True)
    assert resumed.step == straight.step == 6
    for mod in ("G", "G_ema"):
        a = getattr(straight.recipe, mod).state_dict()
        b = getattr(resumed.recipe, mod).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{mod}.{k}"
    shipped = load_model(tmp_path / "b" / "model.safetensors")
    assert shipped.descriptor.stochastic


def test_diffusion_recipe_refuses_a_deterministic_architecture(crops: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="recipe 'diffusion' trains arch 'sr3'"):
        Trainer(tiny_train_config(crops, tmp_path, recipe="diffusion", steps=3))
    with pytest.raises(ConfigError, match="needs `steps`"):
        Trainer(
            tiny_train_config(
                crops, tmp_path, model={"variant": "sr3", "generator": TINY.model_dump()}
            )
        )


def test_deterministic_only_paths_refuse_a_stochastic_model_clearly(
    he_crop: np.ndarray, tmp_path: Path, capsys
):
    model = tiny_sr3()
    lr = np.ascontiguousarray(he_crop[:64, :64])
    with pytest.raises(StochasticModelError, match="needs a deterministic model.*stochastic"):
        finetune(model, [lr], mode="self-supervised", steps=1)
    path = save_model(model, tmp_path / "sr3.safetensors")
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(he_crop[:128, :128])).save(tmp_path / "in.png")
    code = main(
        [
            "finetune",
            str(tmp_path / "in.png"),
            "--region",
            "0,0,128,128",
            "--model",
            str(path),
            "--out",
            str(tmp_path / "ft.safetensors"),
            "--steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "needs a deterministic model" in err and "Traceback" not in err
    assert not (tmp_path / "ft.safetensors").exists()


def test_evaluate_scores_samples_with_their_spread_and_their_mean(he_png: Path, tmp_path: Path):
    from napari_srgan_sqe.training.evaluate import evaluate

    model = tiny_sr3()
    from PIL import Image

    hr = np.asarray(Image.open(he_png))[:128, :160]
    Image.fromarray(hr).save(tmp_path / "hr.png")
    res = evaluate([model], [tmp_path / "hr.png"], device="cpu", baselines=("bicubic",), samples=3)
    s = res.summary()
    assert set(s) == {"bicubic", "tiny-sr3", "tiny-sr3 [mean of 3]"}
    assert s["tiny-sr3"]["psnr_sd"] > 0  # three samples, three scores
    assert s["bicubic"]["psnr_sd"] == 0 and s["tiny-sr3 [mean of 3]"]["psnr_sd"] == 0
    one = evaluate([model], [tmp_path / "hr.png"], device="cpu", baselines=(), samples=1)
    assert one.summary()["tiny-sr3"]["psnr_sd"] == 0  # one sample: seed 0, no spread
    csv_path, _ = res.write(tmp_path / "out")
    assert "psnr_sd" in csv_path.read_text().splitlines()[0]
    assert "spread over samples" in res.table()


def test_windows_at_any_offset_agree_with_the_whole_image(he_crop: np.ndarray):
    """A region of the slide that starts at an odd pixel is super-resolved with windows
    starting at the whole image's phase of the U-Net's down-sampling: its crop of the
    whole-image sample, not a shifted variant (the bundled SR3 differs by about 0.2
    grey levels on average, up to 2, when windows start at another phase)."""
    model = load_model("sr3-he-x4")
    assert model.descriptor.alignment == 4
    lr = np.ascontiguousarray(he_crop[200:280, 300:380])
    whole = Predictor(model, device="cpu", seed=2).predict_image(lr)
    x, y, w, h = 5, 3, 41, 37
    part = np.asarray(
        super_resolve(lr, model, device="cpu", tile=32, seed=2, region=(x, y, w, h))[0]
    )
    d = np.abs(part.astype(int) - whole[y * 4 : (y + h) * 4, x * 4 : (x + w) * 4].astype(int))
    assert d.max() <= 1 and d.mean() < 0.1
