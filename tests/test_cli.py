"""The `srgan-sqe` command line: train / evaluate / models / experiment, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from napari_srgan_sqe.cli import main
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
