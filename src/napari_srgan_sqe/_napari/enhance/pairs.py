"""Which layers an Enhance press works on, and where its result goes: the pair (LR, SR,
maybe HR) decided on the GUI thread before the worker starts (`make_request`), and the
LR and SR layers added, renewed and tagged when it has finished (`place`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe._napari.enhance.status import simulated_by, sr_name
from napari_srgan_sqe.inference.enhancement import Prepared

__all__ = ["Request", "make_request", "place"]


@dataclass
class Request:
    """One Enhance press: which layers, and how to place the result."""

    lr_layer: Any = None
    hr_layer: Any = None
    pair_id: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    degradation: str = "clean"
    old_lr: Any = None  # a simulated LR layer to renew (the preset changed)
    model_path: str | None = None  # the model file, when the model came from one

    @property
    def source(self) -> Any:
        """The layer the user chose: the HR that LR is simulated from, or the LR."""
        return self.hr_layer if self.hr_layer is not None else self.lr_layer


def make_request(layers: Any, lr_layer: Any, hr_layer: Any, degradation: str = "clean") -> Request:
    """Decide the pair and the levels to send to the worker (GUI thread)."""
    if hr_layer is not None:
        pair = _layers.find_pair(layers, hr_layer)
        if pair is not None and (pair.hr is None or pair.lr is None):
            pair = None  # no LR simulated from it yet: a new pair
        if pair is not None and simulated_by(pair.lr) == degradation:
            lr_layer, hr_layer = pair.lr, None  # LR already simulated: enhance it again
        else:  # new, or simulated with another preset: (re)simulate in the same pair
            return Request(
                hr_layer=hr_layer,
                pair_id=pair.pair_id if pair is not None else _layers.new_pair_id(),
                kwargs={
                    "hr_levels": _layers.layer_levels(hr_layer),
                    "degradation": degradation,
                },
                degradation=degradation,
                old_lr=pair.lr if pair is not None else None,
            )
    pid = _layers.pair_id_of(lr_layer) if _layers.role_of(lr_layer) == "lr" else None
    pair = _layers.find_pair(layers, pid) if pid else None
    return Request(
        lr_layer=lr_layer,
        pair_id=pid or _layers.new_pair_id(),
        kwargs={
            "lr_levels": _layers.layer_levels(lr_layer),
            "expect_scale": pair.scale if pair is not None and pair.hr is not None else None,
        },
    )


def place(viewer: Any, req: Request, res: Prepared) -> tuple[Any, Any]:
    """Add (or renew) the LR layer, if simulated, and the SR layer of a finished prepare
    without error; tag the pair's layers and set their pixel sizes. Returns (LR, SR)."""
    pyramid, s = res.pyramid, res.pyramid.scale
    lr_layer = req.lr_layer
    slide = _layers.slide_name(req.source)
    extra: dict[str, Any] = {"slide": slide}
    if req.hr_layer is not None:
        hr = req.hr_layer
        how = "" if req.degradation == "clean" else f", {req.degradation}"
        name = _layers.role_name("lr", slide, f"simulated {s}x{how}")
        if req.old_lr is not None and req.old_lr in viewer.layers:
            lr_layer = req.old_lr  # the same layer, new pixels
            lr_layer.data = res.lr_levels
            lr_layer.name = name
        else:
            lr_layer = viewer.add_image(
                res.lr_levels,
                multiscale=True,
                rgb=True,
                name=name,
                **_layers.lr_transform(hr, s),
            )
        _layers.mark(hr, "hr", req.pair_id, scale=s, slide=slide)
        _rename(hr, _layers.role_name("hr", slide))
        extra["degradation"] = req.degradation
    else:
        if simulated_by(lr_layer):
            extra["degradation"] = simulated_by(lr_layer)
        else:  # the user's own LR image: its name says so from now on
            _rename(lr_layer, _layers.role_name("lr", slide))
    _layers.mark(lr_layer, "lr", req.pair_id, scale=s, **extra)
    pair = _layers.find_pair(viewer.layers, req.pair_id)
    geometry = _layers.sr_transform(lr_layer, s)
    if pair is not None and pair.sr is not None:
        sr = pair.sr
        for key, value in geometry.items():
            setattr(sr, key, value)
        _layers.show_pyramid(sr, pyramid, model_path=req.model_path)
    else:
        sr = viewer.add_image(list(pyramid), multiscale=True, rgb=True, name="SR", **geometry)
        _layers.attach_pyramid(sr, pyramid)
        tag = {"model": pyramid.model.name, "slide": slide}
        if req.model_path:
            tag["model_path"] = req.model_path
        _layers.mark(sr, "sr", req.pair_id, scale=s, **tag)
    sr.name = sr_name(sr)
    source = req.source
    if "mpp" in source.metadata:  # read from the file (None: it records none)
        mpp = source.metadata["mpp"]
        if req.hr_layer is not None:  # LR simulated from HR, SR on the HR grid
            _layers.set_pixel_size(lr_layer, mpp * s if mpp else None)
            _layers.set_pixel_size(sr, mpp)
        else:
            _layers.set_pixel_size(sr, mpp / s if mpp else None)
    return lr_layer, sr


def _rename(layer: Any, name: str) -> None:
    if layer.name != name:
        layer.name = name
