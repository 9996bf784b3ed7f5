"""Layer roles, pair geometry and crop boxes (napari layer models; no viewer, no display)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_srgan_sqe._napari import _layers


@pytest.fixture
def hr():
    from napari.layers import Image

    return Image(np.zeros((64, 80, 3), np.uint8), rgb=True, scale=(0.5, 0.5), translate=(3, 7))


def test_geometry_follows_the_pixel_centre_convention(hr):
    from napari.layers import Image

    s = 4
    lr = Image(np.zeros((16, 20, 3), np.uint8), rgb=True, **_layers.lr_transform(hr, s))
    sr = Image(np.zeros((64, 80, 3), np.uint8), rgb=True, **_layers.sr_transform(lr, s))
    for i, j in [(0, 0), (3, 5), (15, 19)]:
        # LR pixel (i, j) sits at the centre of the HR block it was averaged from
        block = [hr.data_to_world((s * i + a, s * j + b)) for a in range(s) for b in range(s)]
        np.testing.assert_allclose(lr.data_to_world((i, j)), np.mean(block, axis=0))
    for p in [(0, 0), (17, 33), (63, 79)]:  # SR has the HR geometry
        np.testing.assert_allclose(sr.data_to_world(p), hr.data_to_world(p))


def test_pairs_are_found_from_metadata(hr):
    from napari.layers import Image

    other = Image(np.zeros((8, 8, 3), np.uint8), rgb=True)
    assert _layers.find_pair([hr, other]) is None
    _layers.mark(hr, "hr", "p1", scale=4)
    lr = Image(np.zeros((16, 20, 3), np.uint8), rgb=True)
    sr = Image(np.zeros((64, 80, 3), np.uint8), rgb=True)
    _layers.mark(lr, "lr", "p1", scale=4)
    _layers.mark(sr, "sr", "p1", scale=4, model="m")
    pair = _layers.find_pair([hr, other, lr, sr])
    assert (pair.pair_id, pair.scale, pair.lr, pair.sr, pair.hr) == ("p1", 4, lr, sr, hr)
    assert pair.layers == [lr, sr, hr]
    assert _layers.find_pair([hr, lr, sr], other) is None
    assert _layers.find_pair([hr, lr, sr], lr) == pair
    assert _layers.role_of(sr) == "sr" and sr.metadata["srgan_sqe"]["model"] == "m"
    with pytest.raises(ValueError, match="role"):
        _layers.mark(other, "truth", "p1", scale=4)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (10.2, 99.7, (8, 104, False)),  # snapped outwards to multiples of 4
        (-50.0, 5000.0, (0 + 244, 244 + 512, True)),  # centre 512 of a 1000-px axis
        (500.0, 505.0, (480, 524, False)),  # grown to 44 px around its centre
        (-30.0, 2.0, (0, 44, False)),  # grown, and kept inside the image
    ],
)
def test_axis_range(lo, hi, expected):
    assert _layers._axis_range(lo, hi, 1000, 4, 512, 44) == expected


def test_read_crop_margins_stop_at_the_border():
    img = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    crop, margins = _layers.read_crop(img, 0, 8, 24, 30, margin=4)
    assert margins == (0, 4, 4, 0)
    np.testing.assert_array_equal(_layers.crop_margins(crop, margins), img[0:8, 24:30])


def test_role_names_lead_with_the_role(hr):
    assert _layers.role_name("hr", "CMU-1") == "HR CMU-1"
    assert _layers.role_name("lr", "CMU-1", "simulated 4x, scanner") == (
        "LR simulated 4x, scanner · CMU-1"
    )
    assert _layers.role_name("sr", "CMU-1", "srgan-sqe-he-x4") == "SR srgan-sqe-he-x4 · CMU-1"
    assert _layers.role_name("sr", "", "m") == "SR m" and _layers.role_name("hr") == "HR"
    # the image's own name: from the tag, else the name less its role
    hr.name = "HR CMU-1"
    assert _layers.slide_name(hr) == "CMU-1"
    hr.name = "SR m · CMU-1"
    assert _layers.slide_name(hr) == "CMU-1"
    hr.name = "HRM scan"  # not a role word
    assert _layers.slide_name(hr) == "HRM scan"
    _layers.mark(hr, "hr", "p1", scale=4, slide="biopsy")
    assert _layers.slide_name(hr) == "biopsy"
