"""A model that knows how its input was stored: the coding vector, the conditioned
network, the coding reaching it from slides, exports and evaluation, the JPEG colour
codings of the training degradation, and training in bf16 / channels_last."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_srgan_sqe.cli import main
from napari_srgan_sqe.config import (
    DegradationConfig,
    GeneratorConfig,
    ModelConfig,
    TrainConfig,
    validate,
)
from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.io.codecs import SlideCoding, decode, encode_jpeg
from napari_srgan_sqe.io.slides import open_slide
from napari_srgan_sqe.models.coding import (
    CODING_FEATURES,
    coding_vector,
    describe_coding,
    normalise_coding,
)
from napari_srgan_sqe.models.modelfile import load_model, new_model, reads_coding, save_model
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.models.registry import CLEAN_MODEL, DEFAULT_MODEL, model_for_coding
from napari_srgan_sqe.training.data import PatchSampler
from napari_srgan_sqe.training.evaluate import LRCondition, evaluate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "napari_srgan_sqe" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """A 256 x 256 tissue region of the bundled sample slide (uint8 RGB)."""
    with open_slide(SAMPLE) as slide:
        return np.asarray(slide.levels[0][1200:1456, 800:1056].compute())


def coded_model(seed: int = 0, *, coding: bool = True):
    """A small lrnet whose coding MLP is not at its zero start (so the coding matters)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        name="coded-test", generator=GeneratorConfig(n_blocks=2, channels=8, coding=coding)
    )
    model = new_model(cfg)
    net = model.generator
    if coding:
        with torch.no_grad():
            for p in net.coding_net.parameters():
                p.normal_(0.0, 0.5)
    return model


# -- the vector -------------------------------------------------------------------------
def test_coding_vector_says_codec_quality_and_colour_and_allows_unknown():
    unknown = coding_vector(None)
    assert len(unknown) == CODING_FEATURES and not any(unknown)
    assert coding_vector("unknown") == coding_vector("webp") == unknown
    q30, q95 = coding_vector(("jpeg", 30)), coding_vector(("jpeg", 95))
    assert q30[:5] == q95[:5] == (1.0, 1.0, 0.0, 0.0, 1.0)
    assert (q30[5], q95[5]) == (-1.0, 1.0)
    assert coding_vector("jpeg")[4:6] == (0.0, 0.0)  # quality not known
    assert coding_vector(("jpeg", 70, "rgb"))[6:] == (0.0, 0.0, 1.0)
    assert coding_vector(("jpeg", 70, "ycbcr444"))[6:] == (0.0, 1.0, 0.0)
    assert coding_vector("jpeg2000")[:4] == (1.0, 0.0, 1.0, 0.0)
    assert coding_vector(("jpeg2000", 70))[4] == 0.0  # a scanner's own J2K scale: not told
    assert coding_vector("none")[3] == coding_vector("lossless")[3] == 1.0
    # a slide's coding object, as readers make it
    assert coding_vector(SlideCoding("jpeg", 30, "quantisation tables")) == q30
    assert describe_coding(SlideCoding("jpeg", 30)) == "JPEG Q=30"
    assert describe_coding(("jpeg", 70, "rgb")) == "JPEG Q=70 RGB"
    assert describe_coding(None) == "unknown coding"
    for bad in (("jpeg", 0), ("jpeg", 101), ("jpeg", "high"), ("jpeg", 50, "cmyk"), 5, ()):
        with pytest.raises(ValueError):
            normalise_coding(bad)


def test_model_for_coding_every_codec_and_quality():
    for q in (None, 30, 50, 75, 90, 95, 100):
        assert model_for_coding("jpeg", q) == DEFAULT_MODEL
    for codec in ("jpeg2000", "webp", "unknown", None):
        assert model_for_coding(codec) == DEFAULT_MODEL
    assert model_for_coding("none") == CLEAN_MODEL
    assert model_for_coding(None, preset="clean") == CLEAN_MODEL
    assert model_for_coding(None, preset="scanner") == DEFAULT_MODEL
    for bad in (0, 101, "75", True):
        with pytest.raises(ValueError, match="quality"):
            model_for_coding("jpeg", bad)


# -- the network ------------------------------------------------------------------------
def test_conditioned_network_starts_as_the_plain_one_and_then_reads_the_coding(tissue):
    plain = coded_model(coding=False)
    torch.manual_seed(1)
    grown = new_model(
        ModelConfig(name="g", generator=GeneratorConfig(n_blocks=2, channels=8, coding=True))
    )
    missing, unexpected = grown.generator.load_state_dict(
        plain.generator.state_dict(), strict=False
    )
    assert not unexpected and all(k.startswith("coding_net.") for k in missing)
    lr = tissue[:64, :64]
    ref = Predictor(plain, device="cpu").predict_image(lr)
    for told in (("jpeg", 30), ("jpeg", 90), None):  # zero start: the coding changes nothing
        out = Predictor(grown, device="cpu", coding=told).predict_image(lr)
        assert np.array_equal(out, ref)

    model = coded_model()
    p30 = Predictor(model, device="cpu", coding=("jpeg", 30))
    p90 = Predictor(model, device="cpu", coding=("jpeg", 90))
    assert p30.conditioned and not Predictor(plain, device="cpu").conditioned
    a, b = p30.predict_image(lr), p90.predict_image(lr)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0
    # each predictor tells its own coding, even when they share the model object
    assert np.array_equal(p30.predict_image(lr), a)
    # one vector per image in training: a batch mixing codings equals the codings alone
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    c = torch.tensor([coding_vector(("jpeg", 30)), coding_vector(("jpeg", 90))])
    with torch.no_grad():
        both = model.generator(torch.cat([x, x]), coding=c)
        one = model.generator(x, coding=c[1:])
    assert torch.allclose(both[1:], one, atol=1e-5)
    assert not torch.allclose(both[0], both[1], atol=1e-3)


def test_coded_model_file_round_trip_and_reads_coding(tmp_path: Path):
    model = coded_model()
    path = save_model(model, tmp_path / "coded.safetensors")
    assert reads_coding(path) and reads_coding(model)
    assert not reads_coding("bicubic-x4") and not reads_coding(tmp_path / "missing.safetensors")
    again = load_model(path)
    assert again.config.generator.coding
    x = torch.rand(1, 3, 16, 16)
    c = torch.tensor([coding_vector(("jpeg", 40))])
    with torch.no_grad():
        assert torch.equal(model.generator(x, coding=c), again.generator(x, coding=c))


def test_a_slide_tells_the_engine_its_coding(tissue):
    """super_resolve of a Slide passes the slide's coding (the sample: JPEG Q=30) to a
    conditioned model; an explicit coding overrides it, and each coding is its own
    cache entry."""
    model = coded_model()
    slide = open_slide(SAMPLE)
    assert slide.coding.codec == "jpeg" and slide.coding.quality == 30
    y, x = 1200, 800
    region = (x, y, 64, 64)
    own = np.asarray(super_resolve(slide, model, device="cpu", region=region, tile=64)[0])
    told30 = np.asarray(
        super_resolve(slide, model, device="cpu", region=region, tile=64, coding=("jpeg", 30))[0]
    )
    told90 = np.asarray(
        super_resolve(slide, model, device="cpu", region=region, tile=64, coding=("jpeg", 90))[0]
    )
    assert np.array_equal(own, told30)
    assert not np.array_equal(own, told90)
    # the same pixels as an array: unknown coding unless told
    lr = np.asarray(slide.levels[0][y - 32 : y + 96, x - 32 : x + 96].compute())
    arr = np.asarray(super_resolve(lr, model, device="cpu", region=(32, 32, 64, 64), tile=64)[0])
    unknown = Predictor(model, device="cpu")
    assert unknown.coding == ("unknown", None, None)
    assert not np.array_equal(arr, own)


# -- the degradation ----------------------------------------------------------------------
def _sof_sampling(data: bytes) -> list[int]:
    """The sampling-factor byte of each component in the JPEG's start-of-frame."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            n = data[i + 9]
            return [data[i + 10 + 3 * k + 1] for k in range(n)]
        i += 2 + length
    raise AssertionError("no start-of-frame marker")


def _component_ids(data: bytes) -> list[int]:
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return [data[i + 10 + 3 * k] for k in range(data[i + 9])]
        i += 2 + length
    raise AssertionError("no start-of-frame marker")


def test_jpeg_colour_codings_as_scanners_write_them(tissue):
    """4:2:0 subsamples chroma, 4:4:4 does not, RGB codes R, G, B without a colour
    transform (Aperio's JPEG/RGB: component ids 'R', 'G', 'B', as in the sample's tiles)."""
    img = tissue[:128, :128]
    c420, c444, rgb = (encode_jpeg(img, 70, c) for c in ("ycbcr420", "ycbcr444", "rgb"))
    assert _sof_sampling(c420) == [0x22, 0x11, 0x11]
    assert _sof_sampling(c444) == [0x11, 0x11, 0x11]
    assert _sof_sampling(rgb) == [0x11, 0x11, 0x11] and _component_ids(rgb) == [82, 71, 66]
    from PIL import Image

    for data in (c420, c444, rgb):  # another decoder reads the same pixels
        import io

        with Image.open(io.BytesIO(data)) as im:
            other = np.asarray(im.convert("RGB"))
        assert np.abs(other.astype(int) - decode(data).astype(int)).max() <= 2
    # the sample slide's own tiles are JPEG coded the same way: photometric RGB (no colour
    # transform) and no chroma subsampling
    import tifffile

    with tifffile.TiffFile(SAMPLE) as tif:
        page = tif.pages[0]
        handle = page.parent.filehandle
        handle.seek(page.dataoffsets[0])
        raw = handle.read(page.databytecounts[0])
    assert page.photometric == 2 and page.compression == 7  # RGB, JPEG
    assert _sof_sampling(raw) == _sof_sampling(rgb) == [0x11, 0x11, 0x11]
    # the training chain draws all three when asked
    cfg = DegradationConfig(preset="scanner", jpeg_fraction=1.0, jpeg2000_fraction=0.0,
                            jpeg_colours=["ycbcr420", "ycbcr444", "rgb"])  # fmt: skip
    sampler = PatchSampler([tissue], patch_size=64, batch_size=24, seed=3, degradation=cfg,
                           coding_hidden=0.0)  # fmt: skip
    told = sampler.batch(0).coding
    assert told.shape == (24, CODING_FEATURES)
    assert set(np.flatnonzero(told[:, 6:].sum(0))) == {0, 1, 2}
    assert np.all(told[:, 1] == 1) and np.all(told[:, 4] == 1)


def test_sampler_tells_each_patch_its_coding_and_hides_parts_without_changing_pixels(tissue):
    cfg = DegradationConfig(preset="scanner")
    told = PatchSampler([tissue], patch_size=64, batch_size=32, seed=5, degradation=cfg,
                        coding_hidden=0.0)  # fmt: skip
    hidden = PatchSampler([tissue], patch_size=64, batch_size=32, seed=5, degradation=cfg,
                          coding_hidden=1.0)  # fmt: skip
    a, b = told.batch(4), hidden.batch(4)
    assert np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr)
    assert np.all(a.coding[:, 0] == 1)  # every codec known
    jpeg = a.coding[:, 1] == 1
    assert jpeg.any() and np.all(a.coding[jpeg, 4] == 1)
    # every patch of the hidden sampler withholds something it was told
    withheld = (a.coding != b.coding).any(axis=1) | (b.coding[:, 0] == 0)
    assert withheld[jpeg].all()
    # the coding matches the drawn chain: JPEG quality from the same draw
    from napari_srgan_sqe.degradation import draw_scanner

    assert a.coding.dtype == np.float32 and np.isfinite(a.coding).all()
    assert draw_scanner(cfg, 4, np.random.default_rng(0)).codec in ("none", "jpeg", "jpeg2000")


def test_evaluate_tells_a_conditioned_model_each_condition(tissue, tmp_path: Path):
    img = tmp_path / "hr.png"
    from PIL import Image

    Image.fromarray(tissue[:128, :128]).save(img)
    model = coded_model()
    conds = [
        LRCondition("jpeg", 30),
        LRCondition("jpeg", 70, "rgb"),
        LRCondition("jpeg", 70, "ycbcr444"),
    ]
    assert [c.label for c in conds] == ["jpeg-q30", "jpeg-q70-rgb", "jpeg-q70-444"]
    assert conds[1].coding == ("jpeg", 70, "rgb")
    told = evaluate([model], [img], baselines=("bicubic",), lr_conditions=conds, device="cpu")
    blind = evaluate([model], [img], baselines=("bicubic",), lr_conditions=conds, device="cpu",
                     tell_coding=False)  # fmt: skip

    def psnr(res, lr):
        return next(r["psnr"] for r in res.rows if r["lr"] == lr and r["method"] == "coded-test")

    assert psnr(told, "jpeg-q30") != psnr(blind, "jpeg-q30")
    # the LR itself is the same either way: bicubic scores equal
    b1 = [r["psnr"] for r in told.rows if r["method"] == "bicubic"]
    b2 = [r["psnr"] for r in blind.rows if r["method"] == "bicubic"]
    assert b1 == b2


def test_enhance_prints_what_a_conditioned_model_is_told(tmp_path: Path, capsys):
    path = save_model(coded_model(), tmp_path / "coded.safetensors")
    out = tmp_path / "o.ome.zarr"
    assert main(["enhance", str(SAMPLE), str(out), "--model", str(path),
                 "--region", "800,1200,32,32"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "the model is told: JPEG Q=30" in text
    assert out.is_dir()


# -- training -----------------------------------------------------------------------------
def _tiny_config(tmp_path: Path, tissue: np.ndarray, **extra) -> TrainConfig:
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tissue).save(data / "a.png")
    cfg = {
        "data": [str(data)], "val_images": 0, "patch_size": 48, "batch_size": 2,
        "ae_steps": 0, "warmup_steps": 2, "gan_steps": 2, "out_dir": str(tmp_path / "run"),
        "model": {"generator": {"n_blocks": 1, "channels": 8, "coding": True}},
        "autoencoder": {"channels": [8, 4], "blocks_per_stage": 0},
        "discriminator": {"channels": [8, 8]}, "degradation": {"preset": "scanner"},
        "checkpoint_every": 2, "val_every": 2, "seed": 4, **extra,
    }  # fmt: skip
    return validate(TrainConfig, cfg)


@pytest.mark.parametrize("fast", [False, True])
def test_conditioned_training_in_bf16_and_channels_last_resumes_exactly(tmp_path, tissue, fast):
    from napari_srgan_sqe.training.trainer import Trainer

    extra = {"precision": "bf16", "channels_last": True} if fast else {}
    whole = Trainer(_tiny_config(tmp_path / "a", tissue, **extra))
    whole.run()
    first = Trainer(_tiny_config(tmp_path / "b", tissue, **extra))
    first.run(max_steps=2)
    resumed = Trainer(_tiny_config(tmp_path / "b", tissue, **extra))
    resumed.run(resume=True)
    a = load_model(tmp_path / "a" / "run" / "model.safetensors")
    b = load_model(tmp_path / "b" / "run" / "model.safetensors")
    assert a.config.generator.coding
    for (k, v), (_, w) in zip(a.generator.state_dict().items(), b.generator.state_dict().items()):
        assert torch.equal(v, w), k
    # the coding MLP trained away from its zero start
    assert a.generator.coding_net[2].weight.abs().sum() > 0
    log = [
        json.loads(line) for line in (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines()
    ]
    assert all(np.isfinite(r["g"]) for r in log if "g" in r)


def test_auto_precision_takes_bf16_only_where_the_cpu_computes_it(tmp_path, tissue, monkeypatch):
    """'auto' would be several times slower than float32 if it took bf16 on a CPU that
    emulates it (AVX2 only); it follows oneDNN's own test of the hardware."""
    from napari_srgan_sqe.training import recipes

    cfg = _tiny_config(tmp_path, tissue, precision="auto")
    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        assert recipes.bf16_native(cpu) is native
        recipe = recipes.make_recipe(cfg, cpu, tmp_path)
        with recipe._fast():
            out = torch.nn.functional.linear(torch.ones(1, 4), torch.ones(2, 4))
        assert out.dtype == (torch.bfloat16 if native else torch.float32)
