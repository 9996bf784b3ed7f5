"""The `srgan-sqe` command line: train / evaluate / models / experiment / enhance, and its
errors."""

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


@pytest.fixture
def crops(he_dir: Path, tmp_path: Path) -> Path:
    """160 x 160 crops of the two training images of `he_dir` (real H&E), as PNG files."""
    out = tmp_path / "hr"
    out.mkdir()
    for name in ("train-1.png", "train-2.png"):
        Image.fromarray(load_rgb(he_dir / name)[200:360, 200:360]).save(out / name)
    return out


def test_models_lists_bundled_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "srgan-sqe-he-x4" in out and "bicubic-x4" in out and "CC BY-NC-SA" in out


def test_models_listing_reads_the_files_without_torch():
    """The listing describes each bundled model from its own file (network, size,
    training degradation) and reads only headers: torch is never imported."""
    code = (
        "import sys\n"
        "from napari_srgan_sqe.cli import main\n"
        "main(['models', '--json'])\n"
        "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert "torch imported: False" in res.stderr
    listed = {m["name"]: m for m in json.loads(res.stdout)}
    assert {"srgan-sqe-he-x4", "srgan-sqe-he-x4-clean", "bicubic-x4"} <= set(listed)
    assert [n for n, m in listed.items() if m["default"]] == ["srgan-sqe-he-x4"]
    with_weights = [n for n, m in listed.items() if m["file"] is not None]
    assert {"srgan-sqe-he-x4", "srgan-sqe-he-x4-clean"} <= set(with_weights)
    for name in with_weights:
        entry, model = listed[name], load_model(name)
        gen = model.config.generator
        assert entry["available"] and entry["scale"] == model.scale
        blocks = getattr(gen, "n_blocks", None)  # SR3's U-Net has levels, not blocks
        assert (entry["arch"], entry["blocks"], entry["channels"]) == (
            gen.arch,
            blocks,
            gen.channels,
        )
        assert entry["halo"] == model.halo
        assert entry["parameters"] == sum(p.numel() for p in model.generator.parameters())
        assert entry["degradation"] == (model.metadata.get("degradation") or None)
        if blocks is not None:
            assert f"{blocks} residual blocks x {gen.channels} channels" in entry["summary"]
        else:
            assert f"{gen.steps} sampling steps" in entry["summary"]
    for name in ("srgan-sqe-he-x4", "srgan-sqe-he-x4-clean"):
        assert listed[name]["licence"].startswith("CC BY-NC-SA 4.0")
    assert listed["srgan-sqe-he-x4"]["degradation"] == "scanner"
    assert listed["srgan-sqe-he-x4-clean"]["degradation"] == "clean"
    assert listed["bicubic-x4"]["arch"] == "bicubic" and listed["bicubic-x4"]["parameters"] == 0


def test_models_text_listing_names_network_and_training(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "preset" not in out
    assert (
        out.count("network: lrnet, 12 residual blocks x 48 channels") == 3
    )  # default, clean, fidelity
    assert "network: medsrgan, 6 residual blocks x 32 channels" in out
    assert "trained on: the scanner degradation" in out
    assert "trained on: the clean reference degradation" in out


def test_bench_shows_progress_then_a_summary_or_json(capsys):
    argv = ["bench", "--model", "preset:tiny", "--device", "cpu", "--tile", "64"]
    assert main([*argv, "--seconds", "0.2"]) == 0
    cap = capsys.readouterr()
    for stage in ("loading preset:tiny", "warm-up", "raw forward 1 of 3", "pipeline 2 of 2"):
        assert stage in cap.err
    assert not cap.out.lstrip().startswith("{")
    assert "preset:tiny on cpu" in cap.out and "efficiency:" in cap.out
    assert "Mpx/s end to end" in cap.out

    assert main([*argv, "--seconds", "0.2", "--json"]) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert result["model"] == "preset:tiny" and result["tile"] == 64
    assert result["pipeline_mpx_per_s"] > 0 and "pipeline 1 of 2" in cap.err


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["models", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "Traceback" not in err


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


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("cut.json", '{"data": ["x"], ', "is not valid JSON at line 1, column 17"),
        ("cut.yaml", "data: [a\n b: c", "is not valid YAML at line 2"),
    ],
)
def test_malformed_config_file_is_one_line(tmp_path: Path, capsys, name, text, reason):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} {reason}" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_train_options_and_run_folder_are_checked_first(crops: Path, tmp_path: Path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"data": [str(crops)], "patch_size": 32, "out_dir": "run"}))
    for extra, reason in [
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--max-steps", "-3"], "--max-steps must be at least 1, got -3"),
        (["--data-workers", "-1"], "--data-workers must be 0 to 256, got -1"),
        (["--out", str(path)], f"cannot make the run folder {path}"),
    ]:
        assert main(["train", "--config", str(path), *extra]) == 2
        captured = capsys.readouterr()
        assert reason in captured.err and "Traceback" not in captured.err
        assert "step" not in captured.out  # no training started
    assert path.is_file() and not (tmp_path / "run").exists()


def test_console_script_runs():
    res = subprocess.run(
        [sys.executable, "-m", "napari_srgan_sqe", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "srgan-sqe" in res.stdout


def test_evaluate_scale_mismatch_is_a_user_error(crops: Path, capsys):
    """A 4x model asked for --scale 2: one line, exit status 2, no traceback."""
    assert main(["evaluate", "--model", "bicubic-x4", "--data", str(crops), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "is for scale 4" in err and "Traceback" not in err


def test_finetune_region_outside_the_slide_is_a_user_error(he_png: Path, tmp_path: Path, capsys):
    import torch

    from napari_srgan_sqe.config import ModelConfig, generator_preset
    from napari_srgan_sqe.models.modelfile import new_model, save_model

    lr = load_rgb(he_png)[:64, :80]
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


SAMPLE = ROOT / "src" / "napari_srgan_sqe" / "data" / "CMU-1-Small-Region.svs"


def test_enhance_prints_coding_and_picks_model_by_it(tmp_path: Path, capsys, monkeypatch):
    """Without --model, `enhance` chooses by how the input is stored, and says why."""
    import numpy as np

    from napari_srgan_sqe.inference import export

    chosen: list = []

    def fake_enhance(input, output, *, model, stats, **kwargs):
        chosen.append(model)
        stats.update(output_shape=[8, 8], device="cpu")
        return Path(output)

    monkeypatch.setattr(export, "enhance_slide", fake_enhance)
    assert main(["enhance", str(SAMPLE), str(tmp_path / "a.ome.zarr")]) == 0
    out = capsys.readouterr().out
    assert "input: JPEG Q=30 (quantisation tables), lossy" in out
    assert "model: srgan-sqe-he-x4 (the input is stored as JPEG Q=30, lossy" in out
    assert chosen == ["srgan-sqe-he-x4"]

    png = tmp_path / "lossless.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(png)
    assert main(["enhance", str(png), str(tmp_path / "b.ome.zarr")]) == 0
    out = capsys.readouterr().out
    assert "input: lossless (PNG)" in out
    assert "model: srgan-sqe-he-x4-clean (the input is stored losslessly" in out
    assert chosen[-1] == "srgan-sqe-he-x4-clean"

    args = ["enhance", str(SAMPLE), str(tmp_path / "c.ome.zarr"), "--model", "bicubic-x4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "input: JPEG Q=30" in out and "model: bicubic-x4\n" in out
    assert chosen[-1] == "bicubic-x4"


def test_enhance_default_model_follows_coding_end_to_end(tmp_path: Path, monkeypatch):
    """`enhance_slide(model=None)` on a losslessly stored image uses the clean model."""
    import numpy as np

    from napari_srgan_sqe.inference import export
    from napari_srgan_sqe.io.slides import open_slide

    asked: list = []
    real = export.resolve_model
    monkeypatch.setattr(export, "resolve_model", lambda m: asked.append(m) or real(m))
    png = tmp_path / "lossless.png"
    crop = np.asarray(open_slide(SAMPLE).levels[0][1000:1032, 800:1040])
    Image.fromarray(crop).save(png)
    stats: dict = {}
    out = export.enhance_slide(png, tmp_path / "sr.ome.zarr", device="cpu", tile=32, stats=stats)
    assert asked == ["srgan-sqe-he-x4-clean"] and stats["coding"] == "lossless (PNG)"
    assert open_slide(out).levels[0].shape == (128, 960, 3)


def test_enhance_missing_input_is_a_user_error(tmp_path: Path, capsys):
    assert main(["enhance", str(tmp_path / "nope.svs"), str(tmp_path / "o.ome.zarr")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["zero-shot", "s.svs", "--region", "0,0,64,64", "--out", "z.safetensors",
          "--minutes", "-1"], "--minutes must be above 0, got -1"),
        (["zero-shot", "s.svs", "--region", "0,0,64,64", "--out", "z.safetensors",
          "--minutes", "nan"], "--minutes must be a finite number"),
        (["zero-shot", "s.svs", "--region", "0,0,64,64", "--out", "z.safetensors",
          "--seed", "-1"], "--seed must be at least 0, got -1"),
        (["finetune", "s.svs", "--region", "0,0,64,64", "--out", "f.safetensors",
          "--seed", "-3"], "--seed must be at least 0, got -3"),
        (["enhance", "a.svs", "b.ome.zarr", "--threads", "1000"],
         "--threads must be at most 256, got 1000"),
        (["bench", "--seconds", "0"], "--seconds must be above 0, got 0"),
        (["evaluate", "--model", "m", "--data", "d", "--samples", "0"],
         "--samples must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_numeric_options_out_of_range_are_one_line_errors(argv, message, capsys):
    """Every numeric option is checked against one table before anything runs."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_negative_seed_in_a_train_config_is_refused_before_the_run_starts(tmp_path: Path, capsys):
    cfg = tmp_path / "c.json"
    out = tmp_path / "run"
    cfg.write_text(json.dumps({"data": [str(tmp_path)], "seed": -1, "out_dir": str(out)}))
    assert main(["train", "--config", str(cfg)]) == 2
    assert "seed" in capsys.readouterr().err
    assert not out.exists()  # no empty log left to block the corrected config


# ---------------------------------------------------------------- `sample`, help, progress
# every argument that takes a slide or image: (command, argv with SLIDE for it, dest)
SLIDE_ARGUMENTS = [
    ("enhance", ["SLIDE", "out.ome.zarr"], "input"),
    ("view", ["SLIDE"], "path"),
    ("finetune", ["SLIDE", "--region", "0,0,64,64", "--out", "f.safetensors"], "slide"),
    ("finetune", ["s.svs", "--hr", "SLIDE", "--region", "0,0,64,64", "--out", "f.safetensors"],
     "hr"),
    ("zero-shot", ["SLIDE", "--region", "0,0,64,64", "--out", "z.safetensors"], "slide"),
    ("bench", ["--input", "SLIDE"], "input"),
    ("evaluate", ["--model", "bicubic-x4", "--data", "SLIDE"], "data"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "argv", "dest"), SLIDE_ARGUMENTS)
def test_sample_names_the_bundled_slide_unless_a_file_is_called_so(
    command, argv, dest, tmp_path: Path, monkeypatch
):
    from napari_srgan_sqe.cli import parse_command
    from napari_srgan_sqe.io.sample import sample_slide_path

    def parsed(word: str) -> Path:
        _, args = parse_command(command, [word if a == "SLIDE" else a for a in argv])
        value = getattr(args, dest)
        return value[0] if isinstance(value, list) else value  # --data is repeatable

    monkeypatch.chdir(tmp_path)
    # the installed package's copy (site-packages in CI, src/ in an editable install)
    assert parsed("sample") == sample_slide_path()
    assert sample_slide_path().name == SAMPLE.name and sample_slide_path().is_file()
    assert parsed("other.svs") == Path("other.svs")  # any other name is a path, unchanged
    (tmp_path / "sample").mkdir()  # a folder (a DICOM slide) or file of that name wins
    assert parsed("sample") == Path("sample")


@pytest.mark.parametrize("command", sorted({c for c, _, _ in SLIDE_ARGUMENTS}))
def test_slide_arguments_say_sample_in_their_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    squeezed = "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens too
    assert "'sample'namesthebundledsampleslide(CMU-1-Small-Region.svs)" in squeezed


def test_view_sample_simulates_lr_as_the_default_view_does(monkeypatch, capsys):
    """`view sample` is `view` without a path: LR simulated from the sample; a path of
    the user's is super-resolved itself."""
    from napari_srgan_sqe._napari import launch

    calls: list[dict] = []
    monkeypatch.setattr(launch, "launch_viewer", lambda slide, **kw: calls.append(kw) or 0)
    assert main(["view", "sample", "--no-enhance"]) == 0
    assert main(["view", "--no-enhance"]) == 0
    assert main(["view", str(SAMPLE), "--no-enhance", "--no-simulate-lr"]) == 0
    assert [c["simulate_lr"] for c in calls] == [True, True, False]
    assert "CMU-1-Small-Region.svs: JPEG Q=30" in capsys.readouterr().out


def test_enhance_sample_writes_it_and_draws_100_percent_once(tmp_path: Path, monkeypatch, capsys):
    """`srgan-sqe enhance sample OUT` super-resolves the bundled slide; the progress bar's
    final state is drawn once (tqdm's close() drew the 100 % line again)."""
    from napari_srgan_sqe.io.slides import open_slide

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "x.ome.zarr"
    assert main(["enhance", "sample", str(out), "--region", "0,0,128,128", "--threads", "1"]) == 0
    cap = capsys.readouterr()
    assert "input: JPEG Q=30" in cap.out and f"wrote {out}" in cap.out
    assert open_slide(out).levels[0].shape == (512, 512, 3)
    assert cap.err.count("100%") == 1, cap.err
    assert cap.err.rstrip().endswith("chunk]") or "chunk/s]" in cap.err


def test_progress_bar_draws_its_final_state_once():
    import io

    from tqdm import tqdm

    from napari_srgan_sqe.cli.progress import progress_bar

    def drawn(make, steps: int, postfix_last: bool = False, write: bool = False) -> str:
        f = io.StringIO()
        bar = make(total=steps, file=f, mininterval=0)
        for i in range(steps):
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}", refresh=False)
            bar.update(1)
        if write:
            bar.write("step 3: validation", file=f)  # clears, writes, draws the bar again
        if postfix_last:  # a new state after the last update: drawn by close()
            bar.set_postfix(loss="0.100", refresh=False)
        bar.close()
        return f.getvalue()

    assert drawn(tqdm, 3).count("100%") == 2  # tqdm's own bar: why this exists
    assert drawn(progress_bar, 3).count("100%") == 1
    text = drawn(progress_bar, 3, postfix_last=True)
    assert text.count("100%") == 2 and text.rstrip().endswith("loss=0.100]")
    text = drawn(progress_bar, 3, write=True)  # redrawn under the line, not again at close
    assert text.count("100%") == 2 and text.index("step 3") < text.rindex("100%")
    assert text.endswith("\n") and drawn(progress_bar, 3).rstrip().endswith("loss=0.333]")


def test_every_command_help_imports_neither_torch_nor_napari():
    """`srgan-sqe COMMAND --help` builds the command's parser only: no torch, napari or
    Qt before argparse is done (`finetune --help` imported torch: 3-5 s)."""
    code = (
        "import contextlib, io, sys\n"
        "from napari_srgan_sqe.cli import SUBCOMMANDS, main\n"
        "for name in SUBCOMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    assert f'srgan-sqe {name}' in out.getvalue(), name\n"
        "    heavy = [m for m in ('torch', 'napari', 'qtpy', 'dask.array', 'scipy', 'zarr')\n"
        "             if m in sys.modules]\n"
        "    print(name, *heavy)\n"
    )
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    from napari_srgan_sqe.cli import SUBCOMMANDS

    assert res.stdout.split("\n")[:-1] == list(SUBCOMMANDS)  # each line: the name alone
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines()}
    assert not {"torch", "napari", "qtpy"} & imported  # -X importtime: what was imported


def _readme_rows() -> dict[str, str]:
    """README's command table: command name -> the row's first cell."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `srgan-sqe "):
            cell = line.split("` |")[0]
            rows[cell.split()[2]] = cell
    return rows


def _options(command: str) -> set[str]:
    import argparse

    from napari_srgan_sqe.cli import SUBCOMMANDS

    module = __import__(SUBCOMMANDS[command][0], fromlist=["add_arguments"])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}


def test_readme_command_table_names_real_options_and_all_of_views():
    import re

    from napari_srgan_sqe.cli import SUBCOMMANDS

    rows = _readme_rows()
    assert set(rows) == set(SUBCOMMANDS)
    for command, cell in rows.items():
        named = set(re.findall(r"--[a-z][a-z0-9-]*", cell))
        assert named <= _options(command), (command, named - _options(command))
    assert set(re.findall(r"--[a-z][a-z0-9-]*", rows["view"])) == _options("view")
    for command in {c for c, _, _ in SLIDE_ARGUMENTS}:
        assert "sample" in rows[command], command


def test_every_error_a_user_can_cause_is_one_line_through_one_base(monkeypatch, capsys):
    """`errors.UserFacingError` is the one base the command line recognises (no list of
    class names): each module's error derives from it and keeps its old built-in base,
    and any error of a new kind deriving from it is printed as one line, exit 2; any
    other exception is a bug and propagates with its traceback."""
    from napari_srgan_sqe._napari.launch import NoDisplayError
    from napari_srgan_sqe.cli import enhance
    from napari_srgan_sqe.config import ConfigError
    from napari_srgan_sqe.errors import UserFacingError
    from napari_srgan_sqe.inference.distributed import SchedulerError
    from napari_srgan_sqe.inference.export import OutOfMemoryError
    from napari_srgan_sqe.io.checkpoints import CheckpointError
    from napari_srgan_sqe.io.errors import DataError, RegionError
    from napari_srgan_sqe.io.pyramid import ExportError
    from napari_srgan_sqe.io.slides import SlideError
    from napari_srgan_sqe.models.device import DeviceError
    from napari_srgan_sqe.models.method import StochasticModelError
    from napari_srgan_sqe.models.modelfile import ModelFileError
    from napari_srgan_sqe.models.predictor import NonFiniteOutputError

    kept = {
        ConfigError: ValueError, DataError: ValueError, RegionError: ValueError,
        OutOfMemoryError: ValueError, ModelFileError: ValueError, CheckpointError: ValueError,
        StochasticModelError: ValueError, DeviceError: RuntimeError,
        NonFiniteOutputError: RuntimeError, SchedulerError: RuntimeError,
        NoDisplayError: RuntimeError, ExportError: OSError, SlideError: Exception,
    }  # fmt: skip
    for cls, builtin in kept.items():
        assert issubclass(cls, UserFacingError) and issubclass(cls, builtin), cls

    class NewKind(UserFacingError):
        pass

    def fails(args):  # noqa: ANN001, ANN202
        raise NewKind("the slide's tiles are upside down; flip them first")

    monkeypatch.setattr(enhance, "run", fails)
    assert main(["enhance", "in.svs", "out.ome.zarr"]) == 2
    err = capsys.readouterr().err
    assert err == ("srgan-sqe enhance: error: the slide's tiles are upside down; flip them first\n")

    def bug(args):  # noqa: ANN001, ANN202
        raise KeyError("a bug")

    monkeypatch.setattr(enhance, "run", bug)
    with pytest.raises(KeyError):
        main(["enhance", "in.svs", "out.ome.zarr"])
