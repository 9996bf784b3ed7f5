"""Faults a user can run into, each refused with one clear line instead of lost work:
an existing training run, a log after a resume, broken model weights, a model of
another scale and an absurd tile size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_srgan_sqe.cli import main
from napari_srgan_sqe.config import ModelConfig, TrainConfig, generator_preset
from napari_srgan_sqe.io.slides import open_slide
from napari_srgan_sqe.models.modelfile import ModelFileError, load_model, new_model, save_model
from napari_srgan_sqe.models.predictor import NonFiniteOutputError, Predictor
from tiny_runs import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "napari_srgan_sqe" / "data" / "CMU-1-Small-Region.svs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """A 160 x 160 crop of the bundled H&E sample slide."""
    return np.asarray(open_slide(SAMPLE).levels[0][1000:1160, 800:960])


@pytest.fixture
def crops(tissue: np.ndarray, tmp_path: Path) -> Path:
    out = tmp_path / "hr"
    out.mkdir()
    Image.fromarray(tissue).save(out / "a.png")
    Image.fromarray(np.ascontiguousarray(tissue[::-1])).save(out / "b.png")
    return out


@pytest.fixture
def small_png(tissue: np.ndarray, tmp_path: Path) -> Path:
    path = tmp_path / "lr.png"
    Image.fromarray(tissue[:32, :48]).save(path)
    return path


def train_config(crops: Path, out: Path, tmp_path: Path, **kw) -> Path:
    """A tiny run that logs (and validates) every step; returns the config file."""
    run = dict(ae_steps=0, warmup_steps=5, gan_steps=0, val_every=1, val_images=1)
    cfg = tiny_train_config(crops, out, **{**run, "val_crop": 32, "num_threads": 1, **kw})
    path = tmp_path / "cfg.json"
    path.write_text(cfg.model_dump_json())
    return path


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def tiny_model(scale: int = 4, name: str = "tiny"):
    torch.manual_seed(0)
    return new_model(ModelConfig(name=name, generator=generator_preset("tiny", scale)))


# -- 1. training into a folder that holds a run ------------------------------------


def test_train_refuses_an_existing_run_unless_resume_or_overwrite(
    crops: Path, tmp_path: Path, capsys
):
    run = tmp_path / "run"
    cfg = train_config(crops, run, tmp_path)
    assert main(["train", "--config", str(cfg), "--max-steps", "2"]) == 0
    ckpt = (run / "checkpoint.safetensors").read_bytes()
    log = (run / "log.jsonl").read_text()
    capsys.readouterr()

    assert main(["train", "--config", str(cfg), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (run / "checkpoint.safetensors").read_bytes() == ckpt  # nothing touched
    assert (run / "log.jsonl").read_text() == log

    assert main(["train", "--config", str(cfg), "--resume", "--overwrite"]) == 2
    assert "give one" in capsys.readouterr().err

    # --overwrite starts again: the old checkpoint, log and model are gone first
    assert main(["train", "--config", str(cfg), "--overwrite"]) == 0
    assert "finished at step 5/5" in capsys.readouterr().out
    assert logged_steps(run) == [1, 2, 3, 4, 5]
    assert (run / "model.safetensors").is_file()
    # a finished run (model.safetensors) is refused too
    assert main(["train", "--config", str(cfg)]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_resume_drops_log_records_after_the_checkpoint(crops: Path, tmp_path: Path, capsys):
    """A run killed between two checkpoints logged steps that the resumed run takes
    again; the log keeps each step once."""
    from napari_srgan_sqe.training.trainer import Trainer

    run = tmp_path / "run"
    cfg = train_config(crops, run, tmp_path, checkpoint_every=2)

    def crash(ev) -> None:  # the process dies after step 3 was logged
        if ev.step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(TrainConfig.model_validate_json(cfg.read_text())).run(callback=crash)
    assert logged_steps(run) == [1, 2, 3]  # but the checkpoint is at step 2
    with (run / "log.jsonl").open("a") as f:
        f.write('{"step": 4, "pha')  # a line cut short by the kill
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    assert "finished at step 5/5" in capsys.readouterr().out
    assert logged_steps(run) == [1, 2, 3, 4, 5]


# -- 2. NaN / infinite weights and outputs ---------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_model_refuses_non_finite_weights(bad: float, tmp_path: Path, small_png, capsys):
    model = tiny_model()
    name, param = list(model.generator.named_parameters())[2]
    with torch.no_grad():
        param.view(-1)[3] = bad
    path = save_model(model, tmp_path / "broken.safetensors")
    with pytest.raises(ModelFileError, match=f"generator.{name}"):
        load_model(path)

    out = tmp_path / "sr.ome.zarr"
    assert main(["enhance", str(small_png), str(out), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"generator.{name}" in err and "NaN or infinite" in err and "Traceback" not in err
    assert not out.exists()


def test_predictor_refuses_non_finite_output(tissue: np.ndarray):
    """Weights that are finite but overflow (or NaN set in memory, past load_model)
    make the predictor raise instead of returning black tiles."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.generator.parameters():
            p.fill_(1e20)
    tiles = tissue[None, :40, :40]
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite"):
        Predictor(model, device="cpu").run(tiles, crop=4)

    model = tiny_model()
    with torch.no_grad():
        next(model.generator.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="'tiny'"):
        Predictor(model, device="cpu").predict_image(tissue[:24, :24])
    # a sound model still runs
    sr = Predictor(tiny_model(), device="cpu").predict_image(tissue[:24, :24])
    assert sr.shape == (96, 96, 3) and sr.dtype == np.uint8


def test_enhance_refuses_a_model_whose_output_is_not_finite(
    tmp_path: Path, small_png: Path, capsys
):
    model = tiny_model()
    with torch.no_grad():
        for p in model.generator.parameters():
            p.fill_(1e20)  # finite, so it loads, but every output overflows
    path = save_model(model, tmp_path / "overflows.safetensors")
    out = tmp_path / "sr.ome.zarr"
    args = ["enhance", str(small_png), str(out), "--model", str(path), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("srgan-sqe enhance: error: model 'tiny' produced NaN or infinite")


# -- 3. a model of another scale says so ------------------------------------------------


def test_enhance_says_the_scale_it_runs_at(tmp_path: Path, small_png: Path, capsys):
    path = save_model(tiny_model(scale=2, name="tiny-x2"), tmp_path / "x2.safetensors")
    out = tmp_path / "sr.ome.zarr"
    args = ["enhance", str(small_png), str(out), "--model", str(path), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "scale: x2 (model tiny-x2" in printed and "not the usual x4" in printed
    assert open_slide(out).levels[0].shape == (64, 96, 3)

    args = ["enhance", str(small_png), str(tmp_path / "b.ome.zarr"), "--model", "bicubic-x4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "scale: x4 (model bicubic-x4" in printed and "usual" not in printed


# -- 4. tile size ---------------------------------------------------------------------------


@pytest.mark.parametrize("tile", ["100000", "4097", "7"])
def test_enhance_refuses_a_tile_outside_the_range(
    tile: str, tmp_path: Path, small_png: Path, capsys
):
    out = tmp_path / "sr.ome.zarr"
    assert main(["enhance", str(small_png), str(out), "--tile", tile]) == 2
    err = capsys.readouterr().err
    assert f"--tile must be 8 to 4096 pixels, got {tile}" in err and "Traceback" not in err
    assert not out.exists()
