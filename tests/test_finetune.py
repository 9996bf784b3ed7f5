"""Region fine-tuning (library): both modes learn, stop, versions, bad regions, no harm."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_srgan_sqe.config import (
    AutoencoderConfig,
    FinetuneConfig,
    ModelConfig,
    generator_preset,
    loss_preset,
)
from napari_srgan_sqe.models.modelfile import load_model, new_model, save_model
from napari_srgan_sqe.training.finetune import (
    Finished,
    RegionError,
    Started,
    Step,
    Validated,
    cut_regions,
    finetune,
    iter_finetune,
    last_layers,
    run_finetune,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = FinetuneConfig(patch_size=48, batch_size=4, lr=1e-3, val_every=10, seed=0)


@pytest.fixture(scope="module")
def image(he_dir: Path) -> Path:
    """A real H&E image (640 x 640 px) that no model here was trained on: the validation
    image of the test images' split (tests/conftest.py). The bundled models were trained
    on MoNuSeg, never on the sample slide it is cut from."""
    return he_dir / "val-1.png"


@pytest.fixture(scope="module")
def hr(image: Path) -> np.ndarray:
    """A 256 x 320 crop of a real H&E image (HR, uint8 RGB)."""
    from napari_srgan_sqe.training.data import load_rgb

    return load_rgb(image)[300:556, 300:620]


def tiny(**kwargs) -> object:
    torch.manual_seed(0)
    return new_model(ModelConfig(name="tiny", generator=generator_preset("tiny"), **kwargs))


def _run(model, regions, mode, steps=30, config=FAST, **kw):
    events: list = []
    result = run_finetune(
        model, regions, mode=mode, steps=steps, config=config, device="cpu",
        callback=events.append, **kw,
    )  # fmt: skip
    return result, events


@pytest.mark.parametrize("mode", ["paired", "self-supervised"])
def test_a_few_steps_lower_the_training_loss(hr, mode):
    model = tiny()
    parent_id = model.identity
    regions = [(None, hr)] if mode == "paired" else [hr]  # self-supervised: hr plays the LR slide
    result, events = _run(model, regions, mode)
    losses = [e.loss for e in events if isinstance(e, Step)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert [e.step for e in events if isinstance(e, Validated)] == [0, 10, 20, 30]
    assert result.improved and result.after["psnr"] > result.before["psnr"]
    assert result.model is not model and model.identity == parent_id  # parent untouched
    assert any("L_E skipped" in n for n in result.notes)


def test_public_finetune_returns_the_new_model(hr):
    """`napari_srgan_sqe.finetune(model, ...)` gives a model whose metadata names its parent."""
    import napari_srgan_sqe

    parent = tiny()
    seen: list = []
    child = napari_srgan_sqe.finetune(
        parent,
        [(None, hr)],
        mode="paired",
        steps=20,
        config=FAST,
        device="cpu",
        callback=seen.append,
    )
    assert napari_srgan_sqe.finetune is finetune
    assert child is not parent and child.metadata["parent"] == "tiny"
    assert child.identity != parent.identity
    import json

    before = json.loads(child.metadata["finetune_before"])
    after = json.loads(child.metadata["finetune_after"])
    assert after["psnr"] > before["psnr"]
    assert child.metadata["finetune_improved"] == "true"
    assert any(isinstance(e, Finished) for e in seen)


def test_public_finetune_not_improved_returns_a_marked_copy(hr):
    """No improvement: still a new object (a copy of the parent), marked as such."""
    model = tiny()
    parent_id = model.identity
    cfg = FAST.model_copy(update={"lr": 0.5, "val_every": 1})  # a wrecking learning rate
    kept = finetune(model, [(None, hr)], mode="paired", steps=3, config=cfg, device="cpu")
    assert kept is not model and kept.generator is not model.generator
    assert kept.metadata["finetune_improved"] == "false"
    assert "finetune_improved" not in model.metadata
    assert kept.identity == parent_id == model.identity


def test_public_finetune_accepts_a_bundled_name(hr):
    """A bundled model name is loaded (it used to fail with AttributeError)."""
    from napari_srgan_sqe.models.registry import BUNDLED_MODELS

    if not BUNDLED_MODELS["srgan-sqe-he-x4"].path.is_file():
        pytest.skip("bundled weights not installed")
    from napari_srgan_sqe.degradation import degrade

    lr = degrade(hr, 4)[:, :48]
    cfg = FAST.model_copy(update={"patch_size": 16, "val_every": 1})
    out = finetune("srgan-sqe-he-x4", [lr], mode="self-supervised", steps=1, config=cfg,
                   device="cpu")  # fmt: skip
    assert out.metadata["finetune_improved"] in ("true", "false")
    assert out.scale == 4


def test_stop_event_ends_the_loop_within_one_step(hr):
    stop = threading.Event()
    steps: list[int] = []

    def on_event(ev):
        if isinstance(ev, Step):
            steps.append(ev.step)
            if ev.step == 3:
                stop.set()

    cfg = FAST.model_copy(update={"val_every": 2})
    result = run_finetune(
        tiny(), [(None, hr)], mode="paired", steps=100, config=cfg, stop_event=stop,
        callback=on_event, device="cpu",
    )  # fmt: skip
    assert steps == [1, 2, 3] and result.stopped and result.steps_done == 3
    assert result.best_step == 2  # the best validated state so far is kept


def test_saved_version_loads_and_differs_from_the_parent(hr, tmp_path):
    parent = tiny()
    result, _ = _run(parent, [(None, hr)], "paired", steps=10, metadata={"note": "x"})
    path = save_model(result.model, tmp_path / "ft.safetensors")
    loaded = load_model(path)
    assert loaded.identity == result.model.identity != parent.identity
    assert (
        loaded.metadata["parent"] == "tiny"
        and loaded.metadata["parent_identity"] == parent.identity
    )
    assert loaded.metadata["finetune_mode"] == "paired" and loaded.metadata["note"] == "x"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(loaded(x), parent(x))


def test_self_supervised_inputs_are_8_bit_like_the_lr_slide(hr):
    """The pseudo-LR the model trains and validates on is rounded as the real LR slide is."""
    model = tiny()
    seen: list[torch.Tensor] = []
    model.generator.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    _run(model, [hr], "self-supervised", steps=3)
    assert len(seen) > 3  # validation passes and training steps
    for x in seen:
        x = x.float() * 255.0
        assert torch.allclose(x, torch.round(x), atol=2e-3)


def test_same_seed_same_model(hr):
    a, _ = _run(tiny(), [hr], "self-supervised", steps=5)
    b, _ = _run(tiny(), [hr], "self-supervised", steps=5)
    assert a.model.identity == b.model.identity


@pytest.mark.parametrize(
    ("rect", "message"),
    [
        ((10, 10, 0, 40), "is empty"),
        ((60, 50, 30, 40), "outside the image"),
        ((-1, 0, 40, 40), "outside the image"),
        ((0, 0, 12, 10), "smaller than a patch"),
    ],
)
def test_bad_regions_raise_before_any_training(hr, rect, message):
    from napari_srgan_sqe.degradation import degrade

    lr = degrade(hr, 4)  # 64 x 80
    with pytest.raises(RegionError, match=message):
        cut_regions(lr, [rect], hr=hr, scale=4, config=FAST)
    events: list = []
    with pytest.raises(RegionError, match="smaller than a patch"):  # arrays too: before any event
        run_finetune(
            tiny(), [hr[:40, :40]], mode="self-supervised", config=FAST, callback=events.append
        )
    assert events == []


def test_cut_regions_pairs_lr_and_hr(hr):
    from napari_srgan_sqe.degradation import degrade

    lr = degrade(hr, 4)
    ((lr_reg, hr_reg),) = cut_regions(lr, [(4, 8, 40, 30)], hr=hr, scale=4, config=FAST)
    assert lr_reg.shape == (30, 40, 3) and hr_reg.shape == (120, 160, 3)
    assert np.array_equal(hr_reg, hr[32:152, 16:176])
    with pytest.raises(RegionError, match="4 x the LR"):
        cut_regions(lr, [(4, 8, 40, 30)], hr=hr[:200], scale=4, config=FAST)


def test_not_improved_keeps_the_old_model(hr):
    model = tiny()
    cfg = FAST.model_copy(update={"lr": 0.5, "val_every": 1})  # a wrecking learning rate
    result, events = _run(model, [(None, hr)], "paired", steps=3, config=cfg)
    assert not result.improved and result.model is model
    assert result.after == result.before
    assert not any(e.best for e in events if isinstance(e, Validated) and e.step > 0)
    assert "did not improve" in result.history[-1]["message"] and "kept" in result.summary()


def test_last_layers_trains_only_the_tail(hr):
    model = tiny()
    assert last_layers(model.generator) == ["tail"]
    paper = new_model(ModelConfig(generator=generator_preset("paper")))
    assert last_layers(paper.generator) == ["up", "tail"]
    cfg = FAST.model_copy(update={"train_layers": "last"})
    result, _ = _run(model, [(None, hr)], "paired", steps=10, config=cfg)
    new, old = result.model.generator.state_dict(), model.generator.state_dict()
    assert all(torch.equal(new[k], old[k]) for k in old if not k.startswith("tail."))
    assert not torch.equal(new["tail.weight"], old["tail.weight"])
    assert any("after the residual trunk: tail" in n for n in result.notes)


def test_the_model_encoder_gives_the_manifold_term(hr):
    model = tiny(autoencoder=AutoencoderConfig(channels=[8, 4]))
    events = list(
        iter_finetune(model, [(None, hr)], mode="paired", steps=2, config=FAST, device="cpu")
    )
    step = next(e for e in events if isinstance(e, Step))
    assert "manifold" in step.terms and events[0].notes == ()
    assert events[-1].result.model.encoder is not None


def test_cli_paired_writes_a_version_and_refuses_bad_regions(hr, tmp_path, capsys):
    from PIL import Image

    from napari_srgan_sqe.cli import main
    from napari_srgan_sqe.degradation import degrade

    Image.fromarray(hr).save(tmp_path / "hr.png")
    Image.fromarray(degrade(hr, 4)).save(tmp_path / "lr.png")
    base = save_model(
        tiny(), tmp_path / "tiny.safetensors", metadata={"training_data": "x.png, y.png"}
    )
    out = tmp_path / "out" / "tiny-ft.safetensors"
    args = [
        "finetune", str(tmp_path / "lr.png"), "--hr", str(tmp_path / "hr.png"),
        "--region", "0,0,80,64", "--model", str(base), "--steps", "10", "--lr", "1e-3",
        "--patch-size", "48", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "before: PSNR" in text and "after:  PSNR" in text
    meta = load_model(out).metadata
    assert meta["parent"] == "tiny" and meta["finetune_mode"] == "paired"
    assert '"w": 80' in meta["finetune_regions"] and meta["name"] == "tiny-ft"
    # what the parent trained on goes along: evaluate still flags those images
    from napari_srgan_sqe.training.evaluate import seen_in_training

    assert meta["inherited_training_data"] == "x.png, y.png"
    assert seen_in_training(load_model(out), [Path("y.png"), Path("z.png")]) == ["y.png"]
    bad = [a if a != "0,0,80,64" else "70,0,80,64" for a in args]
    assert main([*bad, "--overwrite"]) == 2
    assert "outside the image of 80 x 64 px" in capsys.readouterr().err
    # the output is checked before any training: an existing file, a folder it cannot write
    written = out.read_bytes()
    assert main(args) == 2
    assert "already exists (replace it with --overwrite)" in capsys.readouterr().err
    assert out.read_bytes() == written
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    elsewhere = [*args[:-1], str(blocker / "m.safetensors")]
    assert main(elsewhere) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err and "before:" not in err
    # a greyscale HR for a colour LR would teach the model to drop colour: refused
    Image.fromarray(hr.mean(axis=2).astype(np.uint8)).convert("RGB").save(tmp_path / "grey.png")
    grey = [a if a != str(tmp_path / "hr.png") else str(tmp_path / "grey.png") for a in args]
    assert main([*grey, "--overwrite"]) == 2
    assert "the HR image is greyscale but the LR image is in colour" in capsys.readouterr().err
    assert out.read_bytes() == written


def test_self_supervised_never_keeps_a_model_worse_at_the_real_scale(image: Path):
    """Pseudo-pairs can improve while the real-scale SR gets worse; the guard on
    D_s(SR) vs LR must then keep the original model."""
    from napari_srgan_sqe.degradation import degrade
    from napari_srgan_sqe.metrics import psnr
    from napari_srgan_sqe.models.predictor import Predictor
    from napari_srgan_sqe.training.data import load_rgb
    from napari_srgan_sqe.training.finetune import CONSISTENCY_TOLERANCE_DB

    hr = load_rgb(image)[:640, :640]
    base = load_model("srgan-sqe-he-x4")
    lr = degrade(hr)
    cfg = FinetuneConfig(mode="self-supervised", steps=80, val_every=20, lr=2e-4)
    result = run_finetune(base, [lr], config=cfg, device="cpu")
    assert "consistency_psnr" in result.before or not result.improved
    if result.improved:
        drop = result.before["consistency_psnr"] - result.after["consistency_psnr"]
        assert drop <= CONSISTENCY_TOLERANCE_DB
    else:
        assert result.model is base
    # whatever was kept is not much worse than the base against the true HR
    kept = Predictor(result.model, device="cpu").predict_image(lr)
    orig = Predictor(base, device="cpu").predict_image(lr)
    assert psnr(kept, hr) >= psnr(orig, hr) - 0.5


def test_srgan_loss_without_vgg_weights_is_named_in_the_notes(hr):
    cfg = FAST.model_copy(update={"loss": loss_preset("srgan").model_copy(update={"lam_a": 0.0})})
    result, events = _run(tiny(), [(None, hr)], "paired", steps=2, config=cfg)
    assert any("VGG content loss skipped" in n for n in events[0].notes)
    assert any("VGG content loss skipped" in n for n in result.notes)


def test_cli_drive_stops_on_sigterm_keeping_the_best_state(hr, capsys):
    """SIGTERM (what batch schedulers send) stops a command-line fine-tune between steps
    like Ctrl-C: the result (best state so far) comes back to be written."""
    import os
    import signal

    from napari_srgan_sqe.cli.finetune import drive

    before = signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    events = iter_finetune(
        tiny(), [(None, hr)], mode="paired", steps=500, config=FAST, device="cpu", stop_event=stop
    )

    def terminated_after_12_steps():
        for ev in events:
            yield ev
            if isinstance(ev, Step) and ev.step == 12:
                os.kill(os.getpid(), signal.SIGTERM)

    result = drive(terminated_after_12_steps(), 500, stop)
    assert result.stopped and 12 <= result.steps_done < 500
    assert "the best state so far is kept" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is given back


def test_cli_says_what_training_reached_when_nothing_is_kept(hr, capsys):
    from napari_srgan_sqe.cli.finetune import drive

    cfg = FAST.model_copy(update={"lr": 0.5, "val_every": 1})  # a wrecking learning rate
    events = iter_finetune(tiny(), [(None, hr)], mode="paired", steps=3, config=cfg, device="cpu")
    result = drive(events, 3, threading.Event())
    out = capsys.readouterr().out
    assert not result.improved
    assert "best during training: PSNR" in out and "; not kept" in out
    assert "after:" not in out  # no "after" numbers that are the "before" ones again
