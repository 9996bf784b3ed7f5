"""What each of the Fine-tune widget's buttons runs, checked before a worker starts:
the job's kind, its settings from the form, the SR layer whose model it trains or
replaces, and the regions (drawn, or the part in view). A plan that cannot run raises
one of `REFUSALS[kind]` saying why; `training.jobs.finetune_job` then runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from napari_srgan_sqe._napari import _layers
from napari_srgan_sqe.training.jobs import training_degradation

if TYPE_CHECKING:
    from napari_srgan_sqe._napari.finetune.settings import SettingsForm
    from napari_srgan_sqe.training.jobs import JobKind
    from napari_srgan_sqe.training.regions import Mode

__all__ = [
    "ADAPT_MAX_SIDE",
    "ZERO_SHOT_MAX_SIDE",
    "JobPlan",
    "plan_adapt",
    "plan_finetune",
    "plan_zero_shot",
    "refusals",
]

ZERO_SHOT_MAX_SIDE = 512
"""Zero-shot trains on at most this many LR px a side of the view (around its centre)."""
ADAPT_MAX_SIDE = 1024
"""Without drawn rectangles, adaptation draws its real LR from at most this many LR px
a side of the view (around its centre)."""

Rect = tuple[int, int, int, int]
TITLES: dict[str, tuple[str, str]] = {
    "finetune": ("Fine-tune", "cannot start"),
    "zero-shot": ("Zero-shot", "cannot start zero-shot"),
    "adapt": ("Adapt", "cannot adapt"),
}
"""Per kind: the notification's title and the log's words when a plan is refused."""


@dataclass(frozen=True)
class JobPlan:
    """A checked job for the worker, and the layers it reads and changes."""

    kind: JobKind
    pair: Any
    """The layer pair: its SR layer switches to the new model."""
    pyramid: Any
    """The SR layer's pyramid: its model is the parent (not for 'zero-shot')."""
    config: Any
    """A `FinetuneConfig`, or for 'adapt' `AdaptSettings`."""
    rects: list[Rect]
    lr_level: Any
    what: str
    """The log's first line: what runs, on what."""
    hr_level: Any = None

    @property
    def title(self) -> str:
        return TITLES[self.kind][0]


def refusals(kind: JobKind) -> tuple[type[Exception], ...]:
    """The errors a plan of `kind` is refused with (shown to the user, nothing runs)."""
    from napari_srgan_sqe.config import ConfigError
    from napari_srgan_sqe.io.errors import RegionError
    from napari_srgan_sqe.models.method import StochasticModelError

    if kind == "zero-shot":
        return (RegionError, ConfigError)
    if kind == "adapt":  # TypeError: a field AdaptSettings does not have
        return (RegionError, ConfigError, StochasticModelError, TypeError)
    return (RegionError, ConfigError, StochasticModelError)


def _sr_source(pair: Any, use: str) -> Any:
    """The SR layer's pyramid; RegionError without an SR layer (`use`: what training
    does with the SR layer's model)."""
    from napari_srgan_sqe.io.errors import RegionError

    pyramid = _layers.pyramid_of(pair.sr) if pair is not None and pair.sr else None
    if pyramid is None or pair is None:
        raise RegionError(f"no SR layer: run Enhance first ({use})")
    return pyramid


def _view(view: Callable[[int], Rect | None], max_side: int) -> Rect:
    """`view(max_side)`, the LR rectangle in view; RegionError without an LR layer."""
    from napari_srgan_sqe.io.errors import RegionError

    region = view(max_side)
    if region is None:
        raise RegionError("no LR layer in view")
    return region


def plan_finetune(
    pair: Any, form: SettingsForm, extra: dict[str, Any], regions: Callable[[], list[Rect]]
) -> JobPlan:
    """Fine-tune the SR layer's model on the drawn `regions()` with the form's settings
    (`extra`: FinetuneConfig fields not in the form)."""
    from napari_srgan_sqe.io.errors import RegionError
    from napari_srgan_sqe.models.method import require_deterministic
    from napari_srgan_sqe.training.regions import check_regions

    mode = form.mode
    pyramid = _sr_source(pair, "its model is fine-tuned")
    if pyramid.model.variant == "bicubic":
        raise RegionError("the SR layer uses bicubic (no weights): Enhance with a model")
    if mode == "paired" and pair.hr is None:
        raise RegionError("paired mode needs an HR layer; use self-supervised")
    # pseudo-pairs made the way the model's own training LR was
    cfg = form.finetune_config(training_degradation(pyramid.model), extra)
    require_deterministic(pyramid.model, "Fine-tuning")
    lr_level = _layers.layer_levels(pair.lr)[0]
    rects = check_regions(
        regions(),
        lr_level.shape,
        mode=cast("Mode", mode),  # one of MODES, as FinetuneConfig checked
        scale=pyramid.scale,
        config=cfg,
    )
    hr_level = _layers.layer_levels(pair.hr)[0] if mode == "paired" else None
    what = f"{mode} fine-tuning of {pyramid.model.name!r} on {len(rects)} region(s)"
    return JobPlan("finetune", pair, pyramid, cfg, list(rects), lr_level, what, hr_level)


def plan_zero_shot(
    pair: Any, form: SettingsForm, seed: int, view: Callable[[int], Rect | None]
) -> JobPlan:
    """Train ZSSR on the LR in view (at most ZERO_SHOT_MAX_SIDE a side); the SR
    layer then uses it."""
    from napari_srgan_sqe.training.regions import check_regions

    pyramid = _sr_source(pair, "ZSSR then replaces its model")
    region = _view(view, ZERO_SHOT_MAX_SIDE)
    # pseudo-LR made like the slide's LR: the current model was chosen for it
    cfg = form.zero_shot_config(training_degradation(pyramid.model), seed=seed)
    lr_level = _layers.layer_levels(pair.lr)[0]
    rects = check_regions(
        [region], lr_level.shape, mode="self-supervised", scale=pyramid.scale, config=cfg
    )
    x, y, w, h = rects[0]
    what = f"zero-shot ZSSR on the view ({w} x {h} LR px at x {x}, y {y})"
    return JobPlan("zero-shot", pair, pyramid, cfg, list(rects), lr_level, what)


def plan_adapt(
    pair: Any,
    form: SettingsForm,
    seed: int,
    extra: dict[str, Any],
    regions: Callable[[], list[Rect]],
    view: Callable[[int], Rect | None],
) -> JobPlan:
    """Adapt the SR layer's model to this slide's LR in the drawn `regions()`, else the
    view (at most ADAPT_MAX_SIDE a side); `extra`: AdaptSettings fields not in the form."""
    from napari_srgan_sqe.training.adapt import check_adaptable, check_real_regions

    pyramid = _sr_source(pair, "its model is adapted")
    check_adaptable(pyramid.model)
    settings = form.adapt_settings(seed, extra)
    drawn = regions()
    wanted = drawn or [_view(view, ADAPT_MAX_SIDE)]
    lr_level = _layers.layer_levels(pair.lr)[0]
    rects = check_real_regions(wanted, lr_level.shape, settings.patch_size)
    where = (
        f"{len(rects)} drawn region(s)"
        if drawn
        else "the view ({} x {} LR px)".format(*rects[0][2:])
    )
    what = f"adapting {pyramid.model.name!r} to this slide's LR in {where} (unpaired)"
    return JobPlan("adapt", pair, pyramid, settings, rects, lr_level, what)
