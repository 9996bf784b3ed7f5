"""The method interface: architecture registry, descriptors, medical SRGAN and ZSSR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_srgan_sqe.cli import main
from napari_srgan_sqe.config import (
    ARCH_NAMES,
    ConfigError,
    GeneratorConfig,
    MedicalSRGANConfig,
    ModelConfig,
    ZSSRConfig,
    validate,
)
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.metrics import psnr
from napari_srgan_sqe.models.architectures import ARCHITECTURES, build_network
from napari_srgan_sqe.models.blocks import bicubic_upscale
from napari_srgan_sqe.models.method import SRNetwork
from napari_srgan_sqe.models.modelfile import load_model, new_model, save_model
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.finetune import Finished, last_layers
from napari_srgan_sqe.training.trainer import Trainer
from napari_srgan_sqe.training.zero_shot import iter_zero_shot, new_zssr, zero_shot_config
from tiny_runs import halo_probe, tiny_train_config

SMALL = {
    "lrnet": GeneratorConfig(arch="lrnet", n_blocks=1, channels=8),
    "srresnet": GeneratorConfig(
        arch="srresnet", n_blocks=1, channels=8, head_kernel=9, tail_kernel=5, activation="prelu"
    ),
    "medsrgan": MedicalSRGANConfig(channels=8, n_blocks=1, mid_blocks=1, mid_channels=8),
    "zssr": ZSSRConfig(n_layers=3, channels=8),
}


@pytest.fixture(autouse=True)
def _seeded(one_torch_thread):
    """Every test on one torch thread (the shared fixture), from torch seed 0."""
    torch.manual_seed(0)


def _randomised(arch: str) -> torch.nn.Module:
    """A small network of `arch` whose zero-initialised layers are given weights."""
    net = build_network(SMALL[arch])
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.abs().sum():
                m.weight.normal_(0, 0.1)
                m.bias.normal_(0, 0.1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return net


def test_the_registry_covers_every_config_arch_and_nothing_else():
    assert (
        tuple(ARCHITECTURES)
        == ARCH_NAMES
        == ("srresnet", "lrnet", "medsrgan", "zssr", "sr3", "unpaired")
    )
    for name, cfg in SMALL.items():
        net = build_network(cfg)
        assert isinstance(net, SRNetwork)
        assert isinstance(cfg, ARCHITECTURES[name].config)


@pytest.mark.parametrize("arch", list(SMALL))
def test_round_trip_through_a_model_file_gives_the_same_output(arch: str, tmp_path: Path):
    model = new_model(ModelConfig(name=f"small-{arch}", generator=SMALL[arch]))
    model.generator.load_state_dict(_randomised(arch).state_dict())
    path = save_model(model, tmp_path / f"{arch}.safetensors")
    loaded = load_model(path)
    assert loaded.descriptor == model.descriptor
    assert loaded.metadata["arch"] == arch
    assert loaded.metadata["kind"] == ("zero-shot" if arch == "zssr" else "deterministic")
    assert json.loads(loaded.metadata["method"])["halo"] == model.halo
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(loaded.infer_batch(x), model.eval().infer_batch(x))
    assert loaded.infer_batch(x).shape == (2, 3, 80, 96)


@pytest.mark.parametrize("arch", list(SMALL))
def test_halo_is_the_exact_receptive_field(arch: str):
    net = _randomised(arch).double().eval()
    h = net.halo
    outside, edge = halo_probe(net)
    for (di, dj), changed in outside.items():
        assert not changed, f"({di}, {dj}) leaked in"
    reached = any(edge.values())
    assert reached, f"halo {h} of {arch} is larger than its receptive field"


@pytest.mark.parametrize("arch", list(SMALL))
def test_tiled_equals_whole_for_every_deterministic_method(arch: str, he_crop: np.ndarray):
    model = new_model(ModelConfig(name=f"small-{arch}", generator=SMALL[arch]))
    model.generator.load_state_dict(_randomised(arch).state_dict())
    lr = np.ascontiguousarray(he_crop[100:190, 200:300])
    whole = Predictor(model, device="cpu").predict_image(lr)
    tiled = np.asarray(super_resolve(lr, model, device="cpu", tile=32)[0])
    assert tiled.shape == whole.shape == (360, 400, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_configs_refuse_unknown_architectures_and_foreign_fields():
    with pytest.raises(ConfigError, match="unknown architecture"):
        validate(ModelConfig, {"generator": {"arch": "esrgan"}})
    with pytest.raises(ConfigError, match=r"generator\.zssr\.n_blocks"):
        validate(ModelConfig, {"generator": {"arch": "zssr", "n_blocks": 4}})
    with pytest.raises(ConfigError, match=r"generator\.lrnet\.n_layers"):
        validate(ModelConfig, {"generator": {"arch": "lrnet", "n_layers": 4}})
    with pytest.raises(ConfigError, match=r"medsrgan\.scale"):
        validate(ModelConfig, {"generator": {"arch": "medsrgan", "scale": 2}})
    # a config without `arch` is the default lrnet, as model files have always been read
    assert validate(ModelConfig, {"generator": {"n_blocks": 2}}).generator.arch == "lrnet"


def test_descriptors_state_what_inference_needs():
    light = new_model(ModelConfig(generator=GeneratorConfig(n_blocks=12, channels=48)))
    zssr = load_model("zssr-x4")
    assert light.descriptor.kind == "deterministic" and light.descriptor.tiling == "halo"
    assert light.descriptor.halo == light.halo == 27 and not light.descriptor.stochastic
    assert light.descriptor.speed_class == "fast"
    assert zssr.descriptor.kind == "zero-shot" and zssr.descriptor.speed_class == "slow"
    # multiply-adds per output pixel of the 12 x 48 trunk: 25 3x3 convs of 48 channels
    # and a head conv from RGB, all at LR (1/16 of the output pixels), plus the tail
    trunk = (3 * 48 * 9 + 24 * 48 * 48 * 9 + 48 * 48 * 9 + 48 * 48 * 9) / 16
    assert abs(light.descriptor.macs_per_pixel - trunk) / trunk < 0.1


def test_parameter_groups_drive_fine_tuning_of_every_architecture():
    med = new_model(ModelConfig(generator=SMALL["medsrgan"]))
    assert last_layers(med.generator) == ["up1", "mid", "up2", "tail"]
    paper = new_model(ModelConfig(generator=GeneratorConfig(arch="srresnet")))
    assert last_layers(paper.generator) == ["up", "tail"]
    zssr = new_model(ModelConfig(generator=SMALL["zssr"]))
    assert last_layers(zssr.generator) == ["tail"]
    groups = med.parameter_groups()
    assert len(groups["all"]) == len(list(med.generator.parameters())) > len(groups["last"])


def test_zero_shot_model_starts_as_bicubic(he_crop: np.ndarray):
    lr = np.ascontiguousarray(he_crop[:64, :80])
    out = Predictor(load_model("zssr-x4"), device="cpu").predict_image(lr)
    assert np.abs(out.astype(int) - bicubic_upscale(lr, 4).astype(int)).max() <= 1


def test_zssr_beats_bicubic_on_the_held_out_part_of_a_real_crop(he_crop: np.ndarray):
    """Trained only on the LR of the left part, it must super-resolve the right part
    better than bicubic, measured against the true HR."""
    hr = he_crop[:576, :576]
    lr = degrade(hr, 4)
    train, test, hr_test = lr[:, :96], lr[:, 96:], hr[:, 384:]
    start = new_zssr(network=ZSSRConfig(n_layers=4, channels=32))
    result = None
    for ev in iter_zero_shot([train], model=start, config=zero_shot_config(200), device="cpu"):
        if isinstance(ev, Finished):
            result = ev.result
    assert result is not None and result.improved
    assert result.model.metadata["zero_shot"] == "true"
    sr = Predictor(result.model, device="cpu").predict_image(test)
    gain = psnr(sr, hr_test) - psnr(bicubic_upscale(test, 4), hr_test)
    assert gain > 0.3, f"ZSSR gained only {gain:.2f} dB over bicubic"


def test_zero_shot_refuses_a_model_that_is_not_zero_shot(he_crop: np.ndarray):
    light = new_model(ModelConfig(generator=SMALL["lrnet"]))
    with pytest.raises(ConfigError, match="not a zero-shot method"):
        iter_zero_shot([he_crop[:200, :200]], model=light)


def test_medical_srgan_trains_with_its_residual_discriminator_and_resumes_exactly(
    crops: Path, tmp_path: Path
):
    kw = {
        "model": {"generator": SMALL["medsrgan"].model_dump()},
        "discriminator": {"channels": [8, 16], "residual": True},
    }
    straight = Trainer(tiny_train_config(crops, tmp_path / "a", **kw))
    straight.run()
    first = Trainer(tiny_train_config(crops, tmp_path / "b", **kw))
    first.run(max_steps=6)
    resumed = Trainer(tiny_train_config(crops, tmp_path / "b", **kw))
    resumed.run(resume=True)
    for mod in ("G", "AE", "D"):
        a, b = getattr(straight.recipe, mod).state_dict(), getattr(resumed.recipe, mod).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{mod} differs after resume"
    assert any(type(m).__name__ == "_ResidualSkip" for m in straight.recipe.D.modules())
    model = load_model(tmp_path / "b" / "model.safetensors")
    assert model.arch == "medsrgan" and model.metadata["kind"] == "deterministic"


def test_zero_shot_cli_writes_a_zero_shot_model(he_crop: np.ndarray, tmp_path: Path, capsys):
    lr_path = tmp_path / "lr.png"
    Image.fromarray(degrade(he_crop[:576, :960], 4)).save(lr_path)  # 240 x 144 LR
    out = tmp_path / "zssr.safetensors"
    argv = ["zero-shot", str(lr_path), "--region", "0,0,144,144", "--steps", "150"]
    argv += ["--layers", "4", "--channels", "16", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "zero-shot ZSSR on 1 region(s), 150 steps, pseudo-LR clean" in printed
    model = load_model(out)
    assert model.descriptor.kind == "zero-shot" and model.metadata["finetune_source"] == "lr.png"
    assert model.config.generator == ZSSRConfig(n_layers=4, channels=16)
    lr = np.asarray(Image.open(lr_path))[:, 150:]
    sr = Predictor(model, device="cpu").predict_image(lr)
    assert np.abs(sr.astype(int) - bicubic_upscale(lr, 4).astype(int)).max() > 4  # trained
    argv = ["finetune", str(lr_path), "--region", "0,0,144,144", "--model", "zssr-x4"]
    assert main([*argv, "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "is a zero-shot model" in capsys.readouterr().err


def test_srgan_without_vgg_weights_says_so_plainly(crops: Path, tmp_path: Path, capsys):
    """The paper's SRGAN recipe (PReLU SRResNet, VGG content loss) runs without the VGG
    term when no weights file is given, and says so on the console and in the model."""
    cfg = tiny_train_config(
        crops,
        tmp_path / "run",
        model={
            "name": "srgan-tiny",
            "variant": "srgan",
            "generator": SMALL["srresnet"].model_dump(),
        },
        loss={"q": 2.0, "q_manifold": 2.0, "lam_e": 0.0, "lam_s": 0.0, "lam_vgg": 6e-3},
        discriminator={"channels": [8, 16]},
        ae_steps=0,
        warmup_steps=1,
        gan_steps=1,
    )
    path = tmp_path / "srgan.json"
    path.write_text(cfg.model_dump_json())
    assert main(["train", "--config", str(path)]) == 0
    assert "VGG19 content loss: off: no VGG19 weights file" in capsys.readouterr().out
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.metadata["vgg_content"].startswith("off")
    assert isinstance(model.generator.head[1], torch.nn.PReLU)


def test_models_listing_shows_kind_and_speed_class(tmp_path: Path, capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("zssr-x4") and "[zero-shot, slow]" in ln for ln in lines)
    assert any(ln.startswith("srgan-sqe-he-x4 ") and "[deterministic, fast]" in ln for ln in lines)
    model = new_model(ModelConfig(name="zssr-small", generator=SMALL["zssr"]))
    path = save_model(model, tmp_path / "zssr-small.safetensors")
    assert main(["models", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "zero-shot" and info["arch"] == "zssr"


def test_every_architecture_describes_itself_without_torch():
    """Listings and errors name a network by its config's own `summary()`: a new
    architecture brings its description with its config class, and nothing outside the
    registry dispatches on `arch` to describe it."""
    import subprocess
    import sys

    from napari_srgan_sqe.models.architectures import ARCHITECTURES
    from napari_srgan_sqe.models.modelfile import arch_summary

    for name, arch in ARCHITECTURES.items():
        cfg = arch.config(arch=name) if "arch" in arch.config.model_fields else arch.config()
        text = arch_summary(cfg)
        assert text.startswith(f"{name} (") and text.endswith(")"), text
        assert f"x{cfg.scale}" in text
    code = (
        "import sys; from napari_srgan_sqe.config import SR3Config; "
        "print(SR3Config().summary()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["sr3 (U-Net 48/96/96 ch, 8 steps, x4)", "False"]
