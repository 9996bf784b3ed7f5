"""The `srgan-sqe` command line: train / evaluate / models / experiment, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from napari_srgan_sqe.cli import main
from napari_srgan_sqe.models.modelfile import load_model
from napari_srgan_sqe.training.data import load_rgb

ROOT = Path(__file__).resolve().parents[1]
MONUSEG = ROOT.parent / "shared" / "data" / "monuseg_train"
needs_data = pytest.mark.skipif(
    not MONUSEG.is_dir(), reason="shared H&E data (../shared/data) not present"
)


@pytest.fixture
def crops(tmp_path: Path) -> Path:
    out = tmp_path / "hr"
    out.mkdir()
    for p in sorted(MONUSEG.glob("*.png"))[:2]:
        Image.fromarray(load_rgb(p)[200:360, 200:360]).save(out / p.name)
    return out


def test_models_lists_bundled_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "srgan-sqe-he-x4" in out and "bicubic-x4" in out and "CC BY-NC-SA" in out


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["models", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "Traceback" not in err


@needs_data
def test_train_pause_resume_then_evaluate(crops: Path, tmp_path: Path, capsys):
    cfg = {
        "data": [str(crops)],
        "val_data": [str(crops)],
        "model": {"name": "tiny-cli", "generator": {"arch": "lrnet", "n_blocks": 1, "channels": 8}},
        "autoencoder": {"channels": [8, 4]},
        "discriminator": {"channels": [8, 16]},
        "patch_size": 32,
        "batch_size": 2,
        "ae_steps": 1,
        "warmup_steps": 2,
        "gan_steps": 2,
        "val_every": 100,
        "val_crop": 64,
        "num_threads": 1,
        "out_dir": "run",
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--max-steps", "2"]) == 0
    assert "paused at step 2/5" in capsys.readouterr().out
    assert main(["train", "--config", str(path), "--resume"]) == 0
    assert "finished at step 5/5" in capsys.readouterr().out
    model = tmp_path / "run" / "model.safetensors"  # out_dir is relative to the config file
    assert model.is_file()

    out_dir = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--model",
                "bicubic-x4",
                "--data",
                str(crops),
                "--out",
                str(out_dir),
                "--no-lanczos",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "tiny-cli" in table and "bicubic" in table
    summary = json.loads((out_dir / "evaluation.json").read_text())["summary"]
    assert set(summary) == {"bicubic", "tiny-cli", "bicubic-x4"}

    # a second stage warm-started from the finished model (path relative to the cwd)
    more = ["train", "--config", str(path), "--out", str(tmp_path / "stage2")]
    assert main([*more, "--init-from", str(model)]) == 0
    meta = load_model(tmp_path / "stage2" / "model.safetensors").metadata
    assert meta["initialised_from"] == "tiny-cli"
    capsys.readouterr()
    assert main([*more, "--init-from", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "init_from" in err and "no-such-model" in err and "Traceback" not in err


def test_bad_config_names_the_field(tmp_path: Path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": ["x"], "patch_size": 7}))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "patch_size" in err and "Traceback" not in err


def test_console_script_runs():
    res = subprocess.run(
        [sys.executable, "-m", "napari_srgan_sqe", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "srgan-sqe" in res.stdout


@needs_data
def test_evaluate_scale_mismatch_is_a_user_error(crops: Path, capsys):
    """A 4x model asked for --scale 2: one line, exit status 2, no traceback."""
    assert main(["evaluate", "--model", "bicubic-x4", "--data", str(crops), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "is for scale 4" in err and "Traceback" not in err


@needs_data
def test_finetune_region_outside_the_slide_is_a_user_error(tmp_path: Path, capsys):
    import torch

    from napari_srgan_sqe.config import ModelConfig, generator_preset
    from napari_srgan_sqe.models.modelfile import new_model, save_model

    lr = load_rgb(sorted(MONUSEG.glob("*.png"))[0])[:64, :80]
    Image.fromarray(lr).save(tmp_path / "lr.png")
    torch.manual_seed(0)
    base = save_model(
        new_model(ModelConfig(name="tiny", generator=generator_preset("tiny"))),
        tmp_path / "tiny.safetensors",
    )
    out = tmp_path / "tiny-ft.safetensors"
    args = ["finetune", str(tmp_path / "lr.png"), "--region", "60,0,80,64",
            "--model", str(base), "--steps", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "outside the image" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*args[:-4], "--threads", "0", "--out", str(out)]) == 2
    assert "--threads" in capsys.readouterr().err


def test_parse_region_is_shared():
    import argparse

    from napari_srgan_sqe.cli import finetune as cli_finetune
    from napari_srgan_sqe.cli import parse_region

    assert parse_region(" 1, 2,3 ,4") == (1, 2, 3, 4)
    assert cli_finetune.parse_region is parse_region
    with pytest.raises(argparse.ArgumentTypeError, match="four integers"):
        parse_region("1,2,3")
