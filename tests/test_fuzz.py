"""Property-based and fuzz tests of what users feed the product: TIFF files with random
tag values, truncations and byte damage; split files and training configs of any
JSON shape; every numeric command-line option with any number or text.

The property is always the same: the input is accepted and works, or it is refused
with the product's own error (SlideError, DataError, ConfigError, a one-line CLI
message): never another exception, never made-up pixels. Example counts are kept
small enough for CI; `HYPOTHESIS_PROFILE=thorough` runs many more.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from napari_srgan_sqe.config import ConfigError, TrainConfig, load_config
from napari_srgan_sqe.io.errors import DataError
from napari_srgan_sqe.io.slides import SlideError, open_slide
from tiffcraft import entries, small_tiled

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# -- TIFF readers -----------------------------------------------------------------------
def _base_files(folder: Path) -> dict[str, bytes]:
    """Small valid TIFFs of the kinds slides come in: tiled zlib, tiled JPEG, stripped,
    and a tiled pyramid (SubIFDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)
    small_tiled(folder / "zlib.tif", 64, 32)
    tifffile.imwrite(folder / "jpeg.tif", img, tile=(32, 32), photometric="rgb",
                     compression="jpeg")  # fmt: skip
    tifffile.imwrite(folder / "strips.tif", img, rowsperstrip=16, photometric="rgb",
                     compression="zlib")  # fmt: skip
    with tifffile.TiffWriter(folder / "pyramid.ome.tif", ome=True) as tw:
        tw.write(img, subifds=1, tile=(32, 32), photometric="rgb", compression="zlib")
        tw.write(img[::2, ::2], tile=(32, 32), photometric="rgb", compression="zlib",
                 subfiletype=1)  # fmt: skip
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tif"))}


@pytest.fixture(scope="module")
def base_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _base_files(tmp_path_factory.mktemp("fuzz-base"))


_TAGS = [256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 322, 323, 324, 325, 330, 339]
_VALUES = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 16, 31, 32, 33, 64, 65535, 2**16, 2**31 - 1, 2**32 - 1]),
    st.integers(0, 300),  # near the real sizes, tile edges, codes and offsets
    st.integers(0, 2**32 - 1),
)


def _mutate(data: bytes, tag_edits, byte_edits, cut: float | None) -> bytes:
    """Rewrite the value field of some first-directory tags, overwrite some bytes, and
    cut the file at a fraction of its length."""
    buf = bytearray(data)
    found = entries_of(buf)
    for code, value in tag_edits:
        if code in found:
            at = found[code]
            buf[at + 8 : at + 12] = struct.pack("<I", value)
            if value > 0xFFFF:  # a LONG, so the whole value is read
                buf[at + 2 : at + 4] = struct.pack("<H", 4)
    for pos, byte in byte_edits:
        buf[int(pos * (len(buf) - 1))] = byte
    if cut is not None:
        del buf[max(8, int(cut * len(buf))) :]
    return bytes(buf)


def entries_of(buf: bytearray) -> dict[int, int]:
    """code -> byte of its entry, for the first directory of a little-endian TIFF."""
    (ifd,) = struct.unpack_from("<I", buf, 4)
    (n,) = struct.unpack_from("<H", buf, ifd)
    return {struct.unpack_from("<H", buf, ifd + 2 + 12 * k)[0]: ifd + 2 + 12 * k for k in range(n)}


def _read_or_refuse(path: Path, where: tuple[float, float]) -> None:
    """Open `path` and read a 32 px region of level 0 and all of the smallest level:
    either that works, giving (h, w, 3) uint8 pixels, or SlideError says why."""
    try:
        slide = open_slide(path)
    except SlideError as exc:
        assert str(path) in str(exc)
        event("refused at open")
        return
    level0 = slide.levels[0]
    assert level0.ndim == 3 and level0.shape[2] == 3 and level0.dtype == np.uint8
    h, w = level0.shape[:2]
    y, x = int(where[0] * max(h - 32, 0)), int(where[1] * max(w - 32, 0))
    try:
        got = np.asarray(level0[y : y + 32, x : x + 32])
        smallest = slide.levels[-1]
        if smallest.nbytes <= 64 * 2**20:
            np.asarray(smallest)
    except SlideError as exc:
        assert str(path) in str(exc) or path.name in str(exc)
        event("refused at read")
        return
    event("read")
    assert got.dtype == np.uint8 and got.shape == (min(32, h), min(32, w), 3)


@given(
    name=st.sampled_from(["zlib.tif", "jpeg.tif", "strips.tif", "pyramid.ome.tif"]),
    tag_edits=st.lists(st.tuples(st.sampled_from(_TAGS), _VALUES), max_size=3),
    byte_edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.none(), st.none(), st.none(), st.floats(0, 1)),
    where=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_a_damaged_tiff_opens_and_reads_or_is_refused_with_a_slide_error(
    base_files, tmp_path_factory, name, tag_edits, byte_edits, cut, where
) -> None:
    data = _mutate(base_files[name], tag_edits, byte_edits, cut)
    assume(data != base_files[name])
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data)
    _read_or_refuse(path, where)


def test_the_base_files_read_back_exactly(base_files, tmp_path) -> None:
    """The fuzz starts from files that open: a test that only ever saw refusals would
    pass however the reader failed."""
    for name, data in base_files.items():
        path = tmp_path / name
        path.write_bytes(data)
        want = tifffile.imread(path)
        got = np.asarray(open_slide(path).levels[0])
        if name == "jpeg.tif":
            assert np.abs(got.astype(int) - want).max() <= 2  # tifffile's own JPEG decode
        else:
            np.testing.assert_array_equal(got, want)


def test_the_tag_mutations_reach_the_readers(base_files, tmp_path) -> None:
    """The tags the fuzz rewrites are in the base files' first directories."""
    for name, data in base_files.items():
        path = tmp_path / name
        path.write_bytes(data)
        found = set(entries(path))
        assert {256, 257, 259, 262, 277} <= found
        assert {322, 323, 324, 325} <= found or {273, 278, 279} <= found


# -- split files and training configs ----------------------------------------------------
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_SPLIT = st.one_of(
    _JSON,
    st.dictionaries(st.sampled_from(["train", "val", "dataset"]), _JSON, max_size=3),
    st.fixed_dictionaries({"train": st.lists(_JSON, max_size=3), "val": _JSON}),
)


@given(split=_SPLIT)
def test_any_json_split_file_is_read_or_refused_in_one_line(tmp_path_factory, split) -> None:
    from napari_srgan_sqe.training.data import resolve_split

    folder = tmp_path_factory.mktemp("split")
    for n in ("a.png", "b.png"):
        (folder / n).write_bytes(b"")  # found by name; never decoded here
    split_file = folder / "split.json"
    split_file.write_text(json.dumps(split, allow_nan=True))
    try:
        train, val = resolve_split([folder], split_file)
    except DataError as exc:
        assert "\n" not in str(exc) and "split" in str(exc)
        return
    assert isinstance(split, dict)
    for key, got in (("train", train), ("val", val)):
        names = split.get(key, [])
        assert [p.name for p in got] == [n for n in names if n in ("a.png", "b.png")]


_CONFIG_FIELDS = [
    "seed", "batch_size", "patch_size", "warmup_steps", "gan_steps", "lr", "warmup_lr",
    "lr_final", "ema_decay", "val_images", "num_threads", "checkpoint_every", "val_every",
    "precision", "lower_mag_fraction", "coding_hidden", "data", "split_file", "model",
    "loss", "degradation",
]  # fmt: skip


@given(edits=st.dictionaries(st.sampled_from(_CONFIG_FIELDS), _JSON, min_size=1, max_size=3))
def test_any_config_field_value_is_accepted_or_named_in_a_config_error(
    tmp_path_factory, edits
) -> None:
    base = {"data": ["images"], "out_dir": "run", "warmup_steps": 10, "gan_steps": 10}
    path = tmp_path_factory.mktemp("cfg") / "train.json"
    path.write_text(json.dumps({**base, **edits}, allow_nan=True))
    try:
        cfg = load_config(path, TrainConfig)
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith(f"invalid TrainConfig in {path}") or str(path) in text
        for line in text.splitlines()[1:]:  # "  field.sub: what is wrong", one per error
            assert line.isprintable(), line
            assert any(line.startswith(f"  {key}") for key in [*edits, "(top level)"]), line
        return
    for key in ("seed", "batch_size", "warmup_steps", "gan_steps", "checkpoint_every"):
        value = getattr(cfg, key)
        assert isinstance(value, int) and value >= 0
    for key in ("lr", "warmup_lr"):
        assert math.isfinite(getattr(cfg, key)) and getattr(cfg, key) > 0


# -- numeric command-line options ---------------------------------------------------------
_NUMBER_TEXT = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "0x10", "", "1,5", "½", "3 "]),
)
_COMMANDS = {
    "seed": ["finetune", "zero-shot"],
    "threads": ["enhance", "train", "finetune"],
    "steps": ["finetune", "zero-shot"],
    "batch": ["enhance"],
    "minutes": ["zero-shot"],
    "seconds": ["bench"],
    "mpp": ["enhance"],
}


@given(option=st.sampled_from(sorted(_COMMANDS)), text=_NUMBER_TEXT, pick=st.integers(0, 2))
def test_any_numeric_option_value_runs_or_gives_a_one_line_error(option, text, pick) -> None:
    """Parsing and the range checks only: each command's arguments are checked before
    anything is read, so an accepted value here reaches the command's work."""
    from napari_srgan_sqe.cli import (
        NUMERIC_OPTIONS,
        UserError,
        check_numeric_options,
        parse_command,
    )

    command = _COMMANDS[option][pick % len(_COMMANDS[option])]
    flag = "--" + option.replace("_", "-")
    region = ["in.png", "--region", "0,0,64,64", "--out", "o.safetensors"]
    positional = {
        "enhance": ["in.svs", "out.ome.zarr"], "finetune": region, "zero-shot": region,
        "train": ["--config", "c.json"], "bench": [],
    }[command]  # fmt: skip
    try:
        _, args = parse_command(command, [*positional, f"{flag}={text}"])
    except SystemExit as exc:  # argparse: "invalid int value", one line, exit 2
        assert exc.code == 2
        return
    low, high, exclusive = NUMERIC_OPTIONS[option]
    value = getattr(args, option)
    inside = math.isfinite(value) and (value > low if exclusive else value >= low) and value <= high
    try:
        check_numeric_options(args)
    except UserError as exc:
        assert flag in str(exc) and "\n" not in str(exc)
        assert not inside
        return
    assert inside
