"""Pseudo-supervised unpaired SR (Maeda 2020): arch 'unpaired', its recipe, real-LR
patches, warm start, the command line and slide adaptation, on real H&E."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_srgan_sqe.cli import main
from napari_srgan_sqe.config import (
    ConfigError,
    GeneratorConfig,
    ModelConfig,
    RealLRSource,
    TrainConfig,
    UnpairedConfig,
    ZSSRConfig,
    validate,
)
from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.io.errors import DataError, RegionError
from napari_srgan_sqe.io.slides import open_slide
from napari_srgan_sqe.models.modelfile import load_model, new_model, save_model
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.adapt import (
    AdaptSettings,
    check_adaptable,
    check_real_regions,
    iter_adapt,
)
from napari_srgan_sqe.training.finetune import Finished, Started, Step, Validated
from napari_srgan_sqe.training.recipes import UnpairedRecipe
from napari_srgan_sqe.training.trainer import Trainer
from napari_srgan_sqe.training.unpaired_data import (
    RealLRSampler,
    background_fraction,
    open_real_lr,
    real_lr_image,
)
from tiny_runs import halo_probe, tiny_train_config

TINY = UnpairedConfig(
    correction_layers=3, correction_channels=8, sr=GeneratorConfig(n_blocks=1, channels=8)
)
TISSUE = (750, 1950, 400, 400)
"""(x, y, w, h) of a tissue region of the sample slide (level-0 px)."""


@pytest.fixture(autouse=True)
def _seeded(one_torch_thread):
    """Every test on one torch thread (the shared fixture), from torch seed 0."""
    torch.manual_seed(0)


def _randomised() -> torch.nn.Module:
    """The tiny unpaired network with every layer given weights (C's tail starts at 0)."""
    model = new_model(ModelConfig(name="tiny-unpaired", generator=TINY))
    with torch.no_grad():
        for m in model.generator.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.abs().sum():
                m.weight.normal_(0, 0.1)
                m.bias.normal_(0, 0.1)
    return model


def _config(crops: Path, out: Path, svs: Path, **kw):
    base = dict(
        model={"name": "tiny-unpaired", "variant": "l1", "generator": TINY.model_dump()},
        recipe="unpaired",
        steps=6,
        unpaired={"real_lr": [{"path": str(svs), "regions": [list(TISSUE)]}]},
        ae_steps=0,
        warmup_steps=0,
        gan_steps=0,
    )
    base.update(kw)
    return tiny_train_config(crops, out, **base)


def test_a_fresh_correction_is_the_identity_and_the_halo_adds_up():
    model = new_model(ModelConfig(generator=TINY))
    net = model.generator
    x = torch.rand(1, 3, 12, 12)
    assert torch.equal(net.correction(x), x)
    with torch.no_grad():
        assert torch.equal(model.infer_batch(x), net.sr(x))
    assert model.halo == TINY.correction_layers + net.sr.halo
    assert model.descriptor.kind == "deterministic" and model.descriptor.tiling == "halo"
    groups = model.parameter_groups()
    assert len(groups["correction"]) == len(list(net.correction.parameters())) > 0
    assert {id(p) for p in groups["last"]} <= {id(p) for p in net.sr.parameters()}


def test_round_trip_through_a_model_file_gives_the_same_output(tmp_path: Path):
    model = _randomised()
    path = save_model(model, tmp_path / "unpaired.safetensors")
    loaded = load_model(path)
    assert loaded.arch == loaded.metadata["arch"] == "unpaired"
    assert loaded.config.generator == TINY and loaded.descriptor == model.descriptor
    assert json.loads(loaded.metadata["method"])["halo"] == model.halo
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(loaded.infer_batch(x), model.eval().infer_batch(x))
    assert loaded.identity == model.identity


def test_halo_is_the_exact_receptive_field():
    net = _randomised().generator.double().eval()
    h = net.halo
    outside, edge = halo_probe(net)
    for (di, dj), changed in outside.items():
        assert not changed, f"({di}, {dj}) leaked in"
    reached = any(edge.values())
    assert reached, f"halo {h} is larger than the receptive field"


def test_tiled_equals_whole(he_crop: np.ndarray):
    model = _randomised()
    lr = np.ascontiguousarray(he_crop[100:190, 200:300])
    whole = Predictor(model, device="cpu").predict_image(lr)
    tiled = np.asarray(super_resolve(lr, model, device="cpu", tile=32)[0])
    assert tiled.shape == whole.shape == (360, 400, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_real_lr_patches_are_a_pure_function_of_seed_and_step(
    cmu_svs: Path, monkeypatch: pytest.MonkeyPatch
):
    from napari_srgan_sqe.training import unpaired_data

    # a region that is half glass (the slide's left margin): background is skipped
    sources = [RealLRSource(path=str(cmu_svs), regions=[(0, 1000, 300, 300), TISSUE])]

    def sampler(seed: int = 3) -> RealLRSampler:
        return RealLRSampler(open_real_lr(sources), patch_size=32, batch_size=6, seed=seed)

    a, b = sampler(), sampler()
    assert np.array_equal(a.batch(7), b.batch(7))  # fresh samplers, same (seed, step)
    assert np.array_equal(a.batch(7), a.batch(7))  # no state advances between calls
    assert not np.array_equal(a.batch(7), a.batch(8))
    assert not np.array_equal(a.batch(7), sampler(4).batch(7))
    batch = a.batch(7)
    assert batch.shape == (6, 3, 32, 32) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    glass = np.asarray(open_slide(cmu_svs).levels[0][1000:1300, 0:300])
    assert background_fraction(glass) > 0.3  # the first region does hold glass
    for step in range(5):
        for patch in a.batch(step):
            u8 = np.round(patch.transpose(1, 2, 0) * 255).astype(np.uint8)
            assert background_fraction(u8) <= 0.5
    # read window by window (a large source) or held in memory: the same patches
    monkeypatch.setattr(unpaired_data, "CACHE_MPX", 0.0)
    lazy = sampler()
    assert not lazy._cache and np.array_equal(lazy.batch(7), batch)


def test_real_lr_sources_are_checked(cmu_svs: Path, tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        open_real_lr([RealLRSource(path=str(tmp_path / "missing.svs"))])
    with pytest.raises(DataError, match="outside the image"):
        open_real_lr([RealLRSource(path=str(cmu_svs), regions=[(5000, 5000, 64, 64)])])
    small = open_real_lr([RealLRSource(path=str(cmu_svs), regions=[(800, 2000, 20, 64)])])
    with pytest.raises(DataError, match="smaller than a real-LR patch"):
        RealLRSampler(small, patch_size=32, batch_size=2)
    with pytest.raises(ConfigError, match=r"unpaired\.real_lr"):
        validate(TrainConfig, {"data": ["x"], "unpaired": {"real_lr": []}})
    with pytest.raises(RegionError, match="smaller than a patch"):
        check_real_regions([(0, 0, 16, 40)], (96, 128, 3), 32)
    assert check_real_regions([(0, 0, 40, 40)], (96, 128, 3), 32) == [(0, 0, 40, 40)]


def test_a_config_without_the_real_lr_source_is_refused(crops: Path, tmp_path: Path):
    cfg = _config(crops, tmp_path / "run", Path("unused"), unpaired=None)
    with pytest.raises(ConfigError, match="needs the real LR it adapts to") as info:
        Trainer(cfg)
    assert '"real_lr"' in str(info.value)
    lrnet = _config(crops, tmp_path / "run", Path("unused"), model={"generator": {"n_blocks": 1}})
    with pytest.raises(ConfigError, match="trains arch 'unpaired'"):
        Trainer(lrnet)


def test_the_recipe_trains_on_real_crops_and_resumes_exactly(
    crops: Path, cmu_svs: Path, tmp_path: Path
):
    straight = Trainer(_config(crops, tmp_path / "a", cmu_svs))
    assert isinstance(straight.recipe, UnpairedRecipe) and straight.total == 6
    rows: list[dict[str, float]] = []
    model = straight.run(callback=lambda ev: rows.append(ev.losses))
    assert {"cyc", "idt", "geo", "adv", "sr", "d"} <= set(rows[-1])
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert model.arch == "unpaired" and model.metadata["real_lr"] == cmu_svs.name
    # the correction net has left the identity, and the file says how it was trained
    fresh = new_model(ModelConfig(generator=TINY))
    assert not torch.equal(
        model.generator.correction.tail.weight, fresh.generator.correction.tail.weight
    )
    saved = load_model(tmp_path / "a" / "model.safetensors")
    assert saved.metadata["recipe"] == "unpaired" and saved.identity == model.identity

    first = Trainer(_config(crops, tmp_path / "b", cmu_svs))
    first.run(max_steps=4)
    resumed = Trainer(_config(crops, tmp_path / "b", cmu_svs))
    resumed.run(resume=True)
    assert resumed.step == straight.step == 6
    for name, module in straight.recipe.modules().items():
        if module is None:
            continue
        other = resumed.recipe.modules()[name]
        assert other is not None
        for key, value in module.state_dict().items():
            assert torch.equal(value, other.state_dict()[key]), f"{name}.{key} differs"
    for name, opt in straight.recipe.optimizers().items():
        assert opt is not None
        a, b = opt.state_dict()["state"], resumed.recipe.optimizers()[name].state_dict()["state"]
        for idx in a:
            for key in a[idx]:
                assert torch.equal(torch.as_tensor(a[idx][key]), torch.as_tensor(b[idx][key]))


def test_warm_start_puts_an_lrnet_model_into_the_sr_net(crops: Path, cmu_svs: Path, tmp_path: Path):
    lrnet = new_model(ModelConfig(name="tiny-lrnet", generator=TINY.sr))
    source = save_model(lrnet, tmp_path / "lrnet.safetensors")
    trainer = Trainer(_config(crops, tmp_path / "run", cmu_svs, init_from=str(source)))
    net = trainer.recipe.network()
    for key, value in lrnet.generator.state_dict().items():
        assert torch.equal(net.sr.state_dict()[key], value)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(net.correction(x), x)  # C starts as the identity
    assert "as the SR net" in trainer.init_source
    zssr = save_model(new_model(ModelConfig(generator=ZSSRConfig())), tmp_path / "z.safetensors")
    with pytest.raises(ConfigError, match="starts its SR net from an lrnet or srresnet"):
        Trainer(_config(crops, tmp_path / "run2", cmu_svs, init_from=str(zssr)))


def test_srgan_sqe_train_runs_the_recipe_from_a_config_file(
    crops: Path, cmu_svs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cfg = _config(crops, tmp_path / "run", cmu_svs, steps=3, num_threads=1)
    path = tmp_path / "unpaired.json"
    path.write_text(cfg.model_dump_json())
    assert main(["train", "--config", str(path)]) == 0
    assert "finished at step 3/3" in capsys.readouterr().out
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.arch == "unpaired" and model.metadata["unpaired_sr_trained"] == "true"
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    assert logged[-1]["step"] == 3 and "geo" in logged[-1]


def test_adapting_to_a_slide_trains_the_correction_only(cmu_svs: Path):
    parent = new_model(ModelConfig(name="tiny", generator=TINY.sr))
    level = open_slide(cmu_svs).levels[0]
    settings = AdaptSettings(
        steps=4, batch_size=2, patch_size=32, correction_layers=3, correction_channels=8
    )
    settings = AdaptSettings(**{**settings.__dict__, "val_every": 2})
    events = list(
        iter_adapt(
            parent, [real_lr_image(level, [TISSUE], "view")], settings=settings, device="cpu"
        )
    )
    assert isinstance(events[0], Started) and events[0].mode == "unpaired"
    assert [e.step for e in events if isinstance(e, Step)] == [1, 2, 3, 4]
    assert [e.step for e in events if isinstance(e, Validated)] == [0, 2, 4]
    result = events[-1].result
    assert isinstance(events[-1], Finished) and result.improved and result.steps_done == 4
    model = result.model
    assert model.arch == "unpaired" and model.metadata["parent"] == "tiny"
    for key, value in parent.generator.state_dict().items():  # U unchanged
        assert torch.equal(model.generator.sr.state_dict()[key], value)
    assert abs(result.after["psnr"] - result.before["psnr"]) < 0.5
    with pytest.raises(ConfigError, match="SRGAN-family network"):
        check_adaptable(load_model("zssr-x4"))
