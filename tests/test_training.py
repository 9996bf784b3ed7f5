"""Training pipeline: exact resume, corruption fraction, evaluation, data checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_srgan_sqe.config import ConfigError, CorruptionConfig, TrainConfig, load_config
from napari_srgan_sqe.degradation import degrade, degrade_torch
from napari_srgan_sqe.metrics import ms_ssim, psnr, qilv, rrmse, ssim
from napari_srgan_sqe.models.modelfile import load_model
from napari_srgan_sqe.training.data import DataError, PatchSampler, load_rgb, resolve_split
from napari_srgan_sqe.training.evaluate import bicubic_upscale, evaluate
from napari_srgan_sqe.training.trainer import Trainer
from tiny_runs import tiny_train_config as tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


def test_resume_continues_exactly(crops: Path, tmp_path: Path):
    straight = Trainer(tiny_config(crops, tmp_path / "a"))
    straight.run()
    first = Trainer(tiny_config(crops, tmp_path / "b"))
    first.run(max_steps=5)  # stops mid-warm-up, after one validation
    # a kill -9 during a checkpoint write leaves the atomic writer's temporary file
    left = tmp_path / "b" / ".checkpoint.deadbeef.tmp.safetensors"
    left.write_bytes(b"partial")
    resumed = Trainer(tiny_config(crops, tmp_path / "b"))
    resumed.run(resume=True)
    assert resumed.step == straight.step == 9
    assert not left.exists()  # removed on resume
    for mod in ("G", "AE", "D"):
        a, b = getattr(straight.recipe, mod).state_dict(), getattr(resumed.recipe, mod).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{mod}.{key} differs after resume"
    # the finished run wrote a loadable model that carries the frozen encoder
    model = load_model(tmp_path / "b" / "model.safetensors")
    assert model.encoder is not None and model.scale == 4
    records = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert any("val_psnr" in r for r in records)


def test_weight_average_is_what_validates_resumes_and_ships(crops: Path, tmp_path: Path):
    kw = dict(ema_decay=0.9, ae_steps=0, warmup_steps=2, gan_steps=2)
    t = Trainer(tiny_config(crops, tmp_path / "a", **kw))
    w0 = {k: v.clone() for k, v in t.recipe.G.state_dict().items()}
    t.run(max_steps=1)
    w1 = t.recipe.G.state_dict()
    for k, v in t.recipe.G_ema.state_dict().items():  # one step: 0.9 * w0 + 0.1 * w1
        torch.testing.assert_close(v, w0[k] + 0.1 * (w1[k] - w0[k]))
    t = Trainer(tiny_config(crops, tmp_path / "a", **kw))
    t.run(resume=True)
    straight = Trainer(tiny_config(crops, tmp_path / "b", **kw))
    straight.run()
    for k, v in straight.recipe.G_ema.state_dict().items():  # resumed == uninterrupted, average too
        assert torch.equal(v, t.recipe.G_ema.state_dict()[k])
    shipped = load_model(tmp_path / "a" / "model.safetensors").generator.state_dict()
    for k, v in t.recipe.G_ema.state_dict().items():
        assert torch.equal(shipped[k], v)
    assert any(not torch.equal(shipped[k], v) for k, v in t.recipe.G.state_dict().items())


def test_training_inputs_are_8_bit_like_real_lr_images(crops: Path, tmp_path: Path):
    seen = []
    for quantize in (True, False):
        t = Trainer(tiny_config(crops, tmp_path / str(quantize), quantize_lr=quantize))
        hook = t.recipe.G.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        t.train_step(t.recipe.ae_steps)  # a warm-up step
        hook.remove()
        x = seen[-1] * 255.0
        on_levels = torch.allclose(x, torch.round(x), atol=1e-3)
        assert on_levels == quantize and x.min() >= 0 and x.max() <= 255


def test_quantized_torch_degradation_is_the_uint8_lr_of_numpy_degradation(he_png: Path):
    hr = load_rgb(he_png)[:256, :256]
    batch = torch.from_numpy(hr.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    lr = degrade_torch(batch, 4, quantize=True)[0].numpy().transpose(1, 2, 0) * 255.0
    ref = degrade(hr, 4).astype(np.float32)  # uint8, rounded at the end
    assert lr.shape == ref.shape == (64, 64, 3)
    assert np.abs(lr - ref).max() <= 1.0 + 1e-3  # float32 vs float64: a tie may round apart
    assert np.mean(np.abs(lr - ref) < 1e-3) > 0.999


def test_a_checkpoint_older_than_a_config_field_resumes_as_it_was_trained(
    crops: Path, tmp_path: Path
):
    """A run written before quantize_lr existed trained on unrounded LR, and resumes so."""
    from napari_srgan_sqe.io.checkpoints import read_safetensors, write_safetensors

    cfg = tiny_config(crops, tmp_path / "run", quantize_lr=False)
    Trainer(cfg).run(max_steps=3)
    path = tmp_path / "run" / "checkpoint.safetensors"
    tensors, meta = read_safetensors(path)
    old = json.loads(meta["config"])
    del old["quantize_lr"]  # as an older version of the trainer wrote it
    write_safetensors(path, tensors, {**meta, "config": json.dumps(old)})
    resumed = Trainer(cfg)
    resumed.run(resume=True, max_steps=1)
    assert resumed.step == 4
    with pytest.raises(ConfigError, match=r"different configuration \(quantize_lr\)"):
        Trainer(tiny_config(crops, tmp_path / "run")).run(resume=True)


def test_a_finished_warm_up_can_be_lengthened_on_resume(crops: Path, tmp_path: Path):
    """A warm-up-only run is continued with a longer warm-up, as if it had been planned."""
    kw = dict(ae_steps=1, gan_steps=0)
    straight = Trainer(tiny_config(crops, tmp_path / "a", warmup_steps=5, **kw))
    straight.run()
    Trainer(tiny_config(crops, tmp_path / "b", warmup_steps=2, **kw)).run()
    longer = Trainer(tiny_config(crops, tmp_path / "b", warmup_steps=5, **kw))
    longer.run(resume=True)
    assert longer.step == straight.step == 6
    for key, value in straight.recipe.G.state_dict().items():
        assert torch.equal(value, longer.recipe.G.state_dict()[key]), key
    # Once a GAN step has been taken under the old schedule, the warm-up is fixed.
    kw["gan_steps"] = 2
    Trainer(tiny_config(crops, tmp_path / "c", warmup_steps=2, **kw)).run(max_steps=4)
    changed = Trainer(tiny_config(crops, tmp_path / "c", warmup_steps=5, **kw))
    with pytest.raises(ConfigError, match="past the warm-up"):
        changed.run(resume=True)


def test_resume_refuses_a_different_config(crops: Path, tmp_path: Path):
    Trainer(tiny_config(crops, tmp_path / "a")).run(max_steps=2)
    other = Trainer(tiny_config(crops, tmp_path / "a", patch_size=48))
    with pytest.raises(ValueError, match="different configuration"):
        other.run(resume=True)


def test_warm_start_loads_checkpoint_or_model_weights(crops: Path, tmp_path: Path):
    first = Trainer(tiny_config(crops, tmp_path / "a"))
    first.run()
    # from a checkpoint: G, AE and D start where the first run ended
    cfg = tiny_config(
        crops,
        tmp_path / "b",
        init_from=str(tmp_path / "a" / "checkpoint.safetensors"),
        ae_steps=0,
        warmup_steps=0,
        gan_steps=2,
        patch_size=48,
    )
    second = Trainer(cfg)
    for mod in ("G", "AE", "D"):
        a, b = getattr(first.recipe, mod).state_dict(), getattr(second.recipe, mod).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{mod} was not loaded"
    second.run()
    model = load_model(tmp_path / "b" / "model.safetensors")
    assert model.metadata["initialised_from"] == "checkpoint.safetensors (AE, D, G)"
    assert model.metadata["steps"] == "2"
    # from a model file: the generator and the encoder it carries
    third = Trainer(
        tiny_config(crops, tmp_path / "c", init_from=str(tmp_path / "b" / "model.safetensors"))
    )
    assert all(
        torch.equal(v, third.recipe.G.state_dict()[k])
        for k, v in model.generator.state_dict().items()
    )
    assert all(
        torch.equal(v, third.recipe.AE.encoder.state_dict()[k])
        for k, v in model.encoder.state_dict().items()
    )


def test_warm_start_refuses_a_different_architecture(crops: Path, tmp_path: Path):
    Trainer(tiny_config(crops, tmp_path / "a")).run(max_steps=1)
    bigger = {"generator": {"arch": "lrnet", "n_blocks": 2, "channels": 8}}
    ckpt = str(tmp_path / "a" / "checkpoint.safetensors")
    from napari_srgan_sqe.models.modelfile import ModelFileError

    with pytest.raises(ModelFileError, match=r"is a training checkpoint \(step 1\), not a model"):
        load_model(ckpt)  # e.g. given to enhance --model: says what to do with it
    with pytest.raises(ConfigError, match="do not fit this run's architecture"):
        Trainer(tiny_config(crops, tmp_path / "b", init_from=ckpt, model=bigger))
    with pytest.raises(ConfigError, match="init_from"):
        Trainer(tiny_config(crops, tmp_path / "c", init_from=str(tmp_path / "missing.safetensors")))
    # from a model file, the message says what each network is
    with pytest.raises(ConfigError) as info:
        Trainer(tiny_config(crops, tmp_path / "d", init_from="srgan-sqe-he-x4", model=bigger))
    assert (
        "(it is lrnet, 12 blocks x 48 channels, x4, this run's is lrnet, 2 blocks x 8 channels, x4)"
        in str(info.value)
    )


def test_corruption_fraction_is_respected_and_seeded():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    corr = CorruptionConfig(kind="noise", fraction=0.3, strength=0.05)
    s1 = PatchSampler(images, patch_size=16, batch_size=50, seed=3, corruption=corr)
    s2 = PatchSampler(images, patch_size=16, batch_size=50, seed=3, corruption=corr)
    flags = np.concatenate([s1.batch(step).corrupted for step in range(40)])
    assert abs(flags.mean() - 0.3) < 0.03  # 2000 pairs
    b1, b2 = s1.batch(7), s2.batch(7)
    np.testing.assert_array_equal(b1.hr, b2.hr)
    np.testing.assert_array_equal(b1.corrupted, b2.corrupted)
    # corrupted pairs differ from their clean source only where a corruption was applied
    hit = b1.corrupted
    assert hit.any() and (~hit).any()
    np.testing.assert_array_equal(b1.hr[~hit], b1.lr_source[~hit])


def test_corruption_of_hr_target_only_keeps_lr_clean():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    corr = CorruptionConfig(kind="contrast", fraction=1.0, target="hr")
    b = PatchSampler(images, patch_size=16, batch_size=4, seed=0, corruption=corr).batch(0)
    assert b.corrupted.all()
    assert not np.allclose(b.hr, b.lr_source)
    assert b.hr.std() < b.lr_source.std()  # contrast toward grey


def test_evaluate_bicubic_row_equals_hand_computed(crops: Path, tmp_path: Path):
    result = evaluate(["bicubic-x4"], [crops], baselines=("bicubic",), crops_dir=tmp_path / "png")
    rows = [r for r in result.rows if r["method"] == "bicubic"]
    assert len(rows) == 2
    for row in rows:
        hr = load_rgb(crops / row["image"])
        sr = bicubic_upscale(degrade(hr, 4), 4)
        assert row["psnr"] == pytest.approx(psnr(sr, hr), abs=1e-9)
        assert row["ssim"] == pytest.approx(ssim(sr, hr), abs=1e-9)
        assert row["qilv"] == pytest.approx(qilv(sr, hr), abs=1e-9)
        assert row["rrmse"] == pytest.approx(rrmse(sr, hr), abs=1e-9)
        assert row["ms_ssim"] is None or row["ms_ssim"] == pytest.approx(ms_ssim(sr, hr))
    # the bundled bicubic model is the same interpolation as the baseline
    summary = result.summary()
    assert summary["bicubic-x4"]["psnr"] == pytest.approx(summary["bicubic"]["psnr"], abs=0.05)
    assert "dB vs bic" in result.table()
    csv_path, json_path = result.write(tmp_path / "out")
    assert csv_path.read_text().count("\n") == 1 + len(result.rows)
    assert json.loads(json_path.read_text())["summary"]["bicubic"]["psnr"] > 15
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2
    # LR | bicubic | bicubic-x4 | HR, each named in a white band above it
    from napari_srgan_sqe.training.evaluate import CROP_LABEL_BAND

    panel = np.asarray(Image.open(pngs[0]).convert("RGB"))
    size = panel.shape[0] - CROP_LABEL_BAND
    assert panel.shape[1] == 4 * size + 3 * 4
    band = panel[:CROP_LABEL_BAND]
    for i in range(4):  # dark text in each panel's band, white elsewhere in it
        assert band[:, i * (size + 4) : i * (size + 4) + size].min() < 128
    hr = load_rgb(crops / pngs[0].name)
    y = (hr.shape[0] - size) // 2 // 4 * 4
    x = (hr.shape[1] - size) // 2 // 4 * 4
    assert np.array_equal(panel[CROP_LABEL_BAND:, -size:], hr[y : y + size, x : x + size])


def test_training_refuses_an_empty_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training images"):
        Trainer(tiny_config(tmp_path / "empty", tmp_path / "run"))


def test_training_refuses_non_rgb_images(tmp_path: Path):
    data = tmp_path / "gray"
    data.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "g.png")
    with pytest.raises(DataError, match="needs RGB"):
        Trainer(tiny_config(data, tmp_path / "run"))
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(data / "g.png")
    with pytest.raises(DataError, match="8-bit RGB|needs RGB"):
        Trainer(tiny_config(data, tmp_path / "run"))


def test_training_refuses_patches_larger_than_images(tmp_path: Path):
    data = tmp_path / "small"
    data.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "s.png")
    with pytest.raises(DataError, match="larger than"):
        Trainer(tiny_config(data, tmp_path / "run", patch_size=64))


def test_config_errors_name_the_field(tmp_path: Path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data": ["x"], "batch_sise": 4, "loss": {"q": 3.0}}))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, TrainConfig)
    msg = str(info.value)
    assert "batch_sise" in msg and "loss.q" in msg


def test_split_file_is_fixed_and_disjoint(shared_data: Path | None):
    split_file = ROOT / "experiments" / "monuseg_split.json"
    split = json.loads(split_file.read_text())
    assert len(split["train"]) == 24 and len(split["val"]) == 6
    assert not set(split["train"]) & set(split["val"])
    assert len(set(split["train"])) == 24 and len(set(split["val"])) == 6  # no name twice
    if shared_data is not None:  # the whole training set, where present
        train, val = resolve_split([shared_data / "monuseg_train"], split_file)
        assert len(train) == 24 and len(val) == 6


def test_resolve_split_by_name_and_its_errors(he_dir: Path, he_split: Path, tmp_path: Path):
    """The test images' own split file (two training, one validation image), read as the
    fixed MoNuSeg split is: by file name, in the file's order; names missing from the
    folders or in both lists are data errors."""
    train, val = resolve_split([he_dir], he_split)
    assert [p.name for p in train] == ["train-1.png", "train-2.png"]
    assert [p.name for p in val] == ["val-1.png"]
    assert all(p.parent == he_dir for p in train + val)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["train-1.png", "val-1.png"], "val": ["val-1.png"]}))
    with pytest.raises(DataError, match="in both train and val"):
        resolve_split([he_dir], bad)
    bad.write_text(json.dumps({"train": ["missing.png"], "val": []}))
    with pytest.raises(DataError, match="train images not found"):
        resolve_split([he_dir], bad)
    # evaluating needs the validation images only
    held_out = tmp_path / "held-out.json"
    held_out.write_text(json.dumps({"train": ["elsewhere.png"], "val": ["val-1.png"]}))
    train, val = resolve_split([he_dir], held_out, need=("val",))
    assert train == [] and [p.name for p in val] == ["val-1.png"]
    with pytest.raises(DataError, match="val images not found"):
        resolve_split([he_dir], _write(tmp_path, ["nope.png"]), need=("val",))


def _write(folder: Path, val: list[str]) -> Path:
    path = folder / "val-only.json"
    path.write_text(json.dumps({"train": [], "val": val}))
    return path


def test_gan_learning_rate_decays_linearly_to_lr_final(crops: Path, tmp_path: Path):
    t = Trainer(tiny_config(crops, tmp_path / "a", lr=1e-4, lr_final=1e-5, gan_steps=10))
    start = t.recipe.ae_steps + t.cfg.warmup_steps
    assert t.recipe.gan_lr(start) == pytest.approx(1e-4)
    assert t.recipe.gan_lr(start + 9) == pytest.approx(1e-5)
    assert t.recipe.gan_lr(start + 3) == pytest.approx(1e-4 + 3 / 9 * (1e-5 - 1e-4))
    t.train_step(start + 3)
    assert t.recipe.opt_g.param_groups[0]["lr"] == pytest.approx(t.recipe.gan_lr(start + 3))
    assert t.recipe.opt_d.param_groups[0]["lr"] == pytest.approx(t.recipe.gan_lr(start + 3))


def test_train_cli_stops_on_sigterm_with_a_checkpoint(crops: Path, tmp_path: Path):
    """SIGTERM asks the trainer to stop between steps; --resume then finishes the run."""
    import signal
    import subprocess
    import sys
    import time

    cfg = tiny_config(crops, tmp_path / "run", warmup_steps=100_000, gan_steps=0, ae_steps=0)
    path = tmp_path / "cfg.json"
    path.write_text(cfg.model_dump_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_srgan_sqe", "train", "--config", str(path), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as shells report it
    assert "stopped at step" in out and "Traceback" not in err
    stopped_at = int(out.split("stopped at step ")[1].split(";")[0])
    resumed = Trainer(cfg)
    assert resumed.load_checkpoint() == stopped_at >= 4  # a record is logged at step 4


def test_bicubic_helper_equals_the_bicubic_model_exactly(he_png: Path):
    """One bicubic: the helper, evaluate's baseline and the bicubic-x4 model agree bit for bit."""
    from napari_srgan_sqe.models.blocks import bicubic_upscale as helper
    from napari_srgan_sqe.models.predictor import Predictor

    lr = load_rgb(he_png)[100:161, 200:247]  # odd sizes, real H&E
    model_out = Predictor(load_model("bicubic-x4"), device="cpu").predict_image(lr)
    out = helper(lr, 4)
    assert out.shape == (244, 188, 3) and out.dtype == np.uint8
    assert np.array_equal(out, model_out)
    assert bicubic_upscale is helper  # training.evaluate re-exports it


def test_evaluate_bicubic_row_equals_the_bicubic_model_row(crops: Path):
    result = evaluate(["bicubic-x4"], [crops], baselines=("bicubic",))
    by = {(r["image"], r["method"]): r for r in result.rows}
    for image in {r["image"] for r in result.rows}:
        a, b = by[(image, "bicubic")], by[(image, "bicubic-x4")]
        assert {k: a[k] for k in a if k != "method"} == {k: b[k] for k in b if k != "method"}


def test_evaluate_flags_images_the_model_trained_on(crops: Path, tmp_path: Path):
    """A model's numbers on its own training images are not held-out: the table, the
    JSON and the result say which images those are."""
    from napari_srgan_sqe.models.modelfile import load_model

    names = sorted(p.name for p in crops.iterdir())
    model = load_model("bicubic-x4")
    model.metadata["training_data"] = f"other.png, {names[1]}, more.png"  # as the trainer writes
    result = evaluate([model, "bicubic-x4"], [crops], baselines=("bicubic",))
    assert result.seen == {"bicubic-x4": [names[1]]}  # the bundled one lists none
    table = result.table()
    assert (
        f"warning: 1 of the 2 images ({names[1]}) are in the training data of bicubic-x4" in table
    )
    _, json_path = result.write(tmp_path / "out")
    assert json.loads(json_path.read_text())["seen_in_training"] == {"bicubic-x4": [names[1]]}


def test_evaluate_refuses_bad_scale_and_baseline_as_user_errors(tmp_path: Path):
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="is for scale 4"):
        evaluate(["bicubic-x4"], [tmp_path], scale=2)
    with pytest.raises(ConfigError, match="unknown baseline"):
        evaluate(["bicubic-x4"], [tmp_path], baselines=("nearest",))


def test_evaluate_keeps_models_with_the_same_name_apart(crops: Path, tmp_path: Path):
    a = evaluate(["bicubic-x4", "bicubic-x4"], [crops], baselines=())
    assert {r["method"] for r in a.rows} == {"bicubic-x4", "bicubic-x4 [bicubic-x4]"}


def test_data_workers_train_the_same_model_as_the_training_process(crops: Path, tmp_path: Path):
    """Batches made in worker processes are the serial ones, also after a resume (the
    queue restarts at the checkpoint's step): the trained weights are equal."""
    from napari_srgan_sqe.training.data import BatchPrefetcher

    cfg = tiny_config(crops, tmp_path / "serial", degradation={"preset": "scanner"})
    serial = Trainer(cfg)
    with BatchPrefetcher(serial.sampler, workers=2) as ahead:
        for step in (0, 1, 5, 2):  # a jump back drops the queue and starts again
            got, want = ahead.batch(step), serial.sampler.batch(step)
            assert np.array_equal(got.hr, want.hr) and np.array_equal(got.lr, want.lr)
    serial.run()
    first = Trainer(cfg.model_copy(update={"out_dir": str(tmp_path / "w"), "data_workers": 2}))
    first.run(max_steps=4)
    parallel = Trainer(cfg.model_copy(update={"out_dir": str(tmp_path / "w"), "data_workers": 1}))
    parallel.run(resume=True)
    assert parallel.step == serial.step
    a, b = serial.recipe.G.state_dict(), parallel.recipe.G.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a worker killed mid-run (SIGTERM to the process group, the OOM killer): the
    # training process makes the batches from there on, the same ones
    import os
    import signal

    killed: list[int] = []

    def kill_workers(event) -> None:  # noqa: ANN001
        if event.step == 3:
            for pid in list(broken._prefetch._pool._processes):  # noqa: SLF001
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    broken = Trainer(cfg.model_copy(update={"out_dir": str(tmp_path / "k"), "data_workers": 1}))
    broken.run(callback=kill_workers)
    assert killed and broken.step == serial.step and broken._prefetch is None  # noqa: SLF001
    c = broken.recipe.G.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "content",
    ["[1, 2, 3]", '{"val": 5}', '{"train": "notalist"}', '{"train": [1]}', '{"dataset": "x"}'],
)
def test_a_split_file_of_the_wrong_shape_is_one_clear_error(tmp_path: Path, content, capsys):
    from napari_srgan_sqe.cli import main

    split = tmp_path / "split.json"
    split.write_text(content)
    args = ["evaluate", "--model", "bicubic-x4", "--data", str(tmp_path), "--split", str(split)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "split file" in err and "Traceback" not in err
