"""Networks, model files and the Predictor: shapes, halo, round trips, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_srgan_sqe.config import (
    AutoencoderConfig,
    DiscriminatorConfig,
    GeneratorConfig,
    ModelConfig,
    generator_preset,
)
from napari_srgan_sqe.io.checkpoints import CheckpointError, read_safetensors, write_safetensors
from napari_srgan_sqe.models import registry
from napari_srgan_sqe.models.autoencoder import build_autoencoder
from napari_srgan_sqe.models.blocks import Bicubic
from napari_srgan_sqe.models.discriminator import build_discriminator
from napari_srgan_sqe.models.generator import build_generator
from napari_srgan_sqe.models.modelfile import ModelFileError, load_model, new_model, save_model
from napari_srgan_sqe.models.predictor import DeviceError, Predictor, resolve_device


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_srresnet(scale: int) -> GeneratorConfig:
    return GeneratorConfig(
        arch="srresnet",
        scale=scale,
        n_blocks=1,
        channels=8,
        head_kernel=9,
        tail_kernel=5,
        batch_norm=True,
    )


def tiny_lrnet(scale: int) -> GeneratorConfig:
    return generator_preset("tiny", scale)


GENERATORS = {"srresnet": small_srresnet, "lrnet": tiny_lrnet}


def _randomise_bn(model: torch.nn.Module) -> None:
    """Give BN layers non-trivial running statistics, so a round trip must carry them."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("arch", ["srresnet", "lrnet", "bicubic"])
def test_output_is_scale_times_input(arch: str, scale: int) -> None:
    net = Bicubic(scale) if arch == "bicubic" else build_generator(GENERATORS[arch](scale))
    y = net.eval()(torch.rand(2, 3, 12, 17))
    assert y.shape == (2, 3, 12 * scale, 17 * scale)
    assert net.scale == scale and isinstance(net.halo, int)


def test_preset_halos() -> None:
    # Light: 3x3 head + 8 blocks x 2 convs + trunk conv + 3x3 tail, all at LR: 1+16+1+1.
    assert build_generator(generator_preset("light")).halo == 19
    assert build_generator(generator_preset("tiny")).halo == 7
    # Paper: 4 + 32 + 1 at LR, x2 stage conv (1), x2 stage conv (1/2) and 9x9 tail (4/4).
    assert build_generator(generator_preset("paper")).halo == 40


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("arch", ["srresnet", "lrnet", "bicubic"])
def test_halo_bounds_the_receptive_field(arch: str, scale: int) -> None:
    net = Bicubic(scale) if arch == "bicubic" else build_generator(GENERATORS[arch](scale))
    net = net.double().eval()
    if arch != "bicubic":
        _randomise_bn(net)
    h = net.halo
    size = 2 * h + 9
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    i = j = size // 2
    block = (
        slice(None),
        slice(None),
        slice(i * scale, (i + 1) * scale),
        slice(j * scale, (j + 1) * scale),
    )
    with torch.no_grad():
        ref = net(x)[block]
        changed_at_halo = False
        for di, dj in [(h + 1, 0), (-h - 1, 0), (0, h + 1), (h + 1, -h - 1)]:
            xp = x.clone()
            xp[:, :, i + di, j + dj] += 5.0
            assert torch.equal(net(xp)[block], ref), f"pixel at ({di}, {dj}) leaked through"
        for di, dj in [(h, 0), (-h, 0), (0, h), (0, -h)]:
            xp = x.clone()
            xp[:, :, i + di, j + dj] += 5.0
            changed_at_halo |= not torch.equal(net(xp)[block], ref)
    assert changed_at_halo, f"halo {h} is larger than the receptive field"


def test_autoencoder_and_discriminator_shapes() -> None:
    ae = build_autoencoder(AutoencoderConfig())
    x = torch.rand(2, 3, 32, 32)
    assert ae.encode(x).shape == (2, 8, 8, 8)
    with torch.no_grad():
        y = ae(x)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    d = build_discriminator(DiscriminatorConfig(channels=[8, 16, 32]))
    assert d(x).shape == (2,)


def _model(arch: str, *, encoder: bool = False) -> torch.nn.Module:
    if arch == "bicubic":
        cfg = ModelConfig(name="b", variant="bicubic", generator=GeneratorConfig(scale=4))
    else:
        cfg = ModelConfig(
            name=f"test-{arch}",
            generator=GENERATORS[arch](4),
            autoencoder=AutoencoderConfig(channels=[8, 4]) if encoder else None,
        )
    m = new_model(cfg)
    _randomise_bn(m)
    return m.eval()


@pytest.mark.parametrize("arch", ["srresnet", "lrnet", "bicubic"])
def test_save_load_round_trip(tmp_path, arch: str) -> None:
    model = _model(arch, encoder=arch == "lrnet")
    path = save_model(model, tmp_path / "m.safetensors", metadata={"training_data": "MoNuSeg"})
    loaded = load_model(path)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training and loaded.config == model.config
    assert loaded.identity == model.identity
    assert (loaded.scale, loaded.halo, loaded.variant) == (model.scale, model.halo, model.variant)
    meta = loaded.metadata
    assert meta["format"] == "napari-srgan-sqe" and meta["format_version"] == "1"
    assert meta["training_data"] == "MoNuSeg" and "created" in meta
    if arch == "lrnet":
        assert loaded.encoder is not None
        assert all(not p.requires_grad for p in loaded.encoder.parameters())


def test_save_replaces_atomically(tmp_path) -> None:
    path = save_model(_model("lrnet"), tmp_path / "sub" / "m.safetensors")
    second = _model("lrnet")
    save_model(second, path)
    assert load_model(path).identity == second.identity
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temporaries left


def test_identity_changes_with_weights() -> None:
    a, b = _model("lrnet"), _model("lrnet")
    assert a.identity != b.identity


def test_bundled_models() -> None:
    names = [m["name"] for m in registry.list_models()]
    assert {"srgan-sqe-he-x4", "bicubic-x4"} <= set(names)
    bic = load_model("bicubic-x4")
    assert bic.scale == 4 and bic.halo == 2 and bic.variant == "bicubic"


def _expect(match: str, path, **kw) -> None:  # noqa: ANN001
    with pytest.raises(ModelFileError, match=match):
        load_model(path, **kw)


def test_clear_errors_for_bad_files(tmp_path) -> None:
    model = _model("lrnet")
    good = save_model(model, tmp_path / "good.safetensors")
    data = good.read_bytes()

    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _expect("truncated", tmp_path / "cut.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(data[:5])
    _expect("truncated", tmp_path / "tiny.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    _expect("bad header", tmp_path / "junk.safetensors")

    torch.save(model.state_dict(), tmp_path / "model.pt")
    _expect("pickled PyTorch checkpoint.*pickles can run code", tmp_path / "model.pt")
    (tmp_path / "model.pt").rename(tmp_path / "renamed.safetensors")
    _expect("pickled PyTorch checkpoint", tmp_path / "renamed.safetensors")

    tensors, meta = read_safetensors(good)
    other = model.config.model_copy(
        update={"generator": generator_preset("tiny").model_copy(update={"channels": 24})}
    )
    write_safetensors(
        tmp_path / "mismatch.safetensors", tensors, {**meta, "config": other.model_dump_json()}
    )
    _expect("weights do not fit architecture lrnet", tmp_path / "mismatch.safetensors")

    write_safetensors(tmp_path / "newer.safetensors", tensors, {**meta, "format_version": "7"})
    _expect("newer napari-srgan-sqe.*upgrade", tmp_path / "newer.safetensors")

    write_safetensors(tmp_path / "garbled.safetensors", tensors, {**meta, "config": "{not json"})
    _expect("garbled 'config'", tmp_path / "garbled.safetensors")
    write_safetensors(tmp_path / "foreign.safetensors", tensors, {})
    _expect("not a napari-srgan-sqe model", tmp_path / "foreign.safetensors")

    _expect("does not exist", tmp_path / "nowhere.safetensors")
    _expect("unknown model 'no-such-model'.*srgan-sqe-he-x4.*bicubic-x4", "no-such-model")


def test_pickle_only_when_allowed(tmp_path) -> None:
    model = _model("lrnet")
    state = {k: v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(model.config.model_dump_json())
    loaded = load_model(tmp_path / "m.pt", allow_pickle=True)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_safetensors_with_0x80_header_length_is_not_a_pickle(tmp_path) -> None:
    # The 8-byte little-endian header length starts with 0x80 in about 1 file in 32:
    # such files are valid safetensors, not pickles.
    from safetensors.torch import save_file

    model = _model("lrnet")
    lengths = set()
    for pad in range(65):
        path = save_model(model, tmp_path / f"m{pad}.safetensors", metadata={"pad": "y" * pad})
        lengths.add(path.read_bytes()[0])
        loaded = load_model(path)
        assert loaded.identity == model.identity
        tensors, _ = read_safetensors(path)
        assert set(tensors) == {f"generator.{k}" for k in model.generator.state_dict()}

        plain = tmp_path / f"p{pad}.safetensors"
        save_file({"a": torch.zeros(1)}, plain, metadata={"x": "y" * pad})
        lengths.add(plain.read_bytes()[0])
        tensors, meta = read_safetensors(plain)
        assert torch.equal(tensors["a"], torch.zeros(1)) and meta == {"x": "y" * pad}
    assert 0x80 in lengths  # the sweep covers the case that used to be refused
    torch.save(model.state_dict(), tmp_path / "real.pt")
    _expect("pickled PyTorch checkpoint", tmp_path / "real.pt")
    with pytest.raises(CheckpointError, match="pickled PyTorch checkpoint"):
        read_safetensors(tmp_path / "real.pt")
    torch.save(model.state_dict(), tmp_path / "raw.pt", _use_new_zipfile_serialization=False)
    _expect("pickled PyTorch checkpoint", tmp_path / "raw.pt")


@pytest.mark.parametrize(
    "oom",
    [
        lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
        lambda: RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
    ],
)
def test_predictor_halves_and_remembers_batch_on_oom(monkeypatch, oom) -> None:
    model = _model("lrnet")
    pred = Predictor(model, device="cpu", max_batch=8)
    tiles = np.random.default_rng(0).integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
    want = np.concatenate([pred.run(t[None], crop=2) for t in tiles])
    infer = model.infer_batch
    sizes: list[int] = []

    def fake(x, seed=None, origins=None):  # noqa: ANN001, ANN202
        sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise oom()
        return infer(x, seed=seed, origins=origins)

    monkeypatch.setattr(model, "infer_batch", fake)
    got = pred.run(tiles, crop=2)
    np.testing.assert_array_equal(got, want)
    assert sizes == [8, 4, 2, 2, 2, 2] and pred.max_batch == 2  # halved until it fits
    sizes.clear()
    np.testing.assert_array_equal(pred.run(tiles, crop=2), want)
    assert sizes == [2, 2, 2, 2]  # the reduced batch is remembered: no OOM next time

    monkeypatch.setattr(
        model, "infer_batch", lambda x, seed=None, origins=None: (_ for _ in ()).throw(oom())
    )
    with pytest.raises(DeviceError, match="even for one 24 x 24 tile.*smaller tile.*CPU"):
        pred.run(tiles[:1], crop=2)
    from napari_srgan_sqe.cli import _is_user_error

    try:
        pred.run(tiles[:1], crop=2)
    except DeviceError as exc:
        assert _is_user_error(exc)
    monkeypatch.setattr(
        model,
        "infer_batch",
        lambda x, seed=None, origins=None: (_ for _ in ()).throw(RuntimeError("bug")),
    )
    with pytest.raises(RuntimeError, match="^bug$"):
        pred.run(tiles[:1], crop=2)


def test_missing_bundled_file(monkeypatch) -> None:
    ghost = registry.BundledModel("ghost-x4", "weights/ghost-x4.safetensors", "absent", "CC0")
    monkeypatch.setitem(registry.BUNDLED_MODELS, "ghost-x4", ghost)
    _expect("bundled model 'ghost-x4' has no weights file", "ghost-x4")


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available.*available: "):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


def test_predictor_contract() -> None:
    pred = Predictor(_model("lrnet"), device="cpu", max_batch=2)
    assert pred.device_name == "cpu" and pred.scale == 4 and pred.halo == 7
    tiles = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    full = pred.run(tiles)
    assert full.shape == (3, 80, 80, 3) and full.dtype == np.uint8
    cropped = pred.run(tiles, crop=3)
    assert cropped.shape == (3, 56, 56, 3)
    np.testing.assert_array_equal(cropped, full[:, 12:-12, 12:-12])
    as_float = pred.run(tiles.astype(np.float32) / 255)
    assert np.abs(as_float.astype(int) - full).max() <= 1
    with pytest.raises(ValueError, match="crop"):
        pred.run(tiles, crop=10)


def test_predict_image_equals_tiled() -> None:
    pred = Predictor(_model("lrnet"), device="cpu", max_batch=4)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    whole = pred.predict_image(img)
    assert whole.shape == (148, 180, 3) and whole.dtype == np.uint8
    assert pred.predict_image(img.astype(np.float32) / 255).dtype == np.float32

    s, h, t = pred.scale, pred.halo, 16
    padded = np.pad(img, ((h, h), (h, h), (0, 0)), mode="symmetric")
    tiled = np.zeros_like(whole)
    for y in range(0, img.shape[0], t):
        for x in range(0, img.shape[1], t):
            th, tw = min(t, img.shape[0] - y), min(t, img.shape[1] - x)
            tile = padded[y : y + th + 2 * h, x : x + tw + 2 * h]
            tiled[y * s : (y + th) * s, x * s : (x + tw) * s] = pred.run(tile[None], crop=h)[0]
    assert np.abs(tiled.astype(int) - whole).max() <= 1
    assert np.mean(tiled != whole) < 1e-3
