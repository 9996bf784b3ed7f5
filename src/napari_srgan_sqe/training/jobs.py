"""Fine-tune, zero-shot and adapt jobs: the one place that runs them, for the Fine-tune
widget and the `finetune` and `zero-shot` commands.

A job is what to train and on what (`Job`: its kind, the model it starts from, the
regions read off the slide, its settings and the metadata its file records), built by
`make_job`; `run_job` turns it into the library's event stream (Started, Step,
Validated from `training.finetune`) that ends in `Saved`: the result, and the file
written when validation improved (nothing is written otherwise). `finetune_job` is
the widget's worker body: the same, in a thread, with any error as a `Failed` event.

- 'finetune': `iter_finetune` from the given model (paired with an HR image, else
  self-supervised), the loss a preset (`finetune_config`);
- 'zero-shot': `iter_zero_shot` from a fresh ZSSR network (`start_model`);
- 'adapt': `iter_adapt`, the 'unpaired' recipe with the real LR of the regions
  (`AdaptSettings`).

Versions that the widget saves go to `models_dir()` as
`<parent>-ft-<YYYYmmdd-HHMMSS>.safetensors` (`<parent>-adapt-...` for an adapted
model, `version_path`). Nothing here imports torch at module level: the widget and the
commands' `--help` import it without.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from napari_srgan_sqe.config import FinetuneConfig, ZSSRConfig
    from napari_srgan_sqe.models.modelfile import SRModel
    from napari_srgan_sqe.training.adapt import AdaptSettings
    from napari_srgan_sqe.training.finetune import FinetuneEvent, FinetuneResult

__all__ = [
    "Failed",
    "Job",
    "JobKind",
    "Saved",
    "base_model",
    "finetune_config",
    "finetune_job",
    "make_job",
    "models_dir",
    "run_job",
    "slide_degradation",
    "start_model",
    "training_degradation",
    "version_path",
]

JobKind = Literal["finetune", "zero-shot", "adapt"]


def models_dir() -> Path:
    """Where fine-tuned versions are saved: $NAPARI_SRGAN_SQE_MODELS or ~/.napari-srgan-sqe/models."""
    env = os.environ.get("NAPARI_SRGAN_SQE_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".napari-srgan-sqe" / "models"


def version_path(folder: Path, parent_name: str, tag: str = "ft") -> Path:
    """A new, unused `<parent>-<tag>-<timestamp>[-n].safetensors` in `folder` ('ft' for
    fine-tuned, 'adapt' for adapted versions; an earlier version's suffix is dropped)."""
    base = re.sub(r"-(ft|adapt)-\d{8}-\d{6}(-\d+)?$", "", parent_name) or "model"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"{base}-{tag}-{stamp}.safetensors", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{tag}-{stamp}-{n}.safetensors"
    return path


def training_degradation(model: Any) -> str:
    """The degradation preset a model was trained on (its file's metadata; models written
    before the scanner preset existed were trained on the clean D_s)."""
    preset = str(getattr(model, "metadata", {}).get("degradation", "clean"))
    return preset if preset in ("clean", "scanner") else "clean"


def slide_degradation(slide: Any) -> str:
    """How pseudo-LR is made like a slide's LR: 'scanner' when it is stored lossy
    (JPEG, JPEG 2000), else 'clean'."""
    return "scanner" if slide.coding.lossy else "clean"


def finetune_config(preset: str = "srgan_sqe", /, *, source: str, **fields: Any) -> FinetuneConfig:
    """A validated `FinetuneConfig` of `fields` with the loss of `preset` without its GAN
    term (a `loss` field replaces it); ConfigError naming each bad field, from `source`
    (in words)."""
    from napari_srgan_sqe.config import FinetuneConfig, loss_preset, validate

    loss = loss_preset(preset).model_copy(update={"lam_a": 0.0})
    return validate(FinetuneConfig, {"loss": loss.model_dump(), **fields}, source=source)


def base_model(name: str | None, codec: Any) -> SRModel:
    """The model a `finetune` command starts from: `name` (bundled or a file), or the
    bundled model for the slide's `codec`; ConfigError for one without weights to
    fine-tune (bicubic) or a zero-shot model (trained by `zero-shot` instead)."""
    from napari_srgan_sqe.config import ConfigError
    from napari_srgan_sqe.models.modelfile import load_model
    from napari_srgan_sqe.models.registry import model_for_coding

    model_name = name or model_for_coding(codec)
    model = load_model(model_name)
    if model.variant == "bicubic":
        raise ConfigError(f"{model_name} is the bicubic baseline; it has no weights to fine-tune")
    if model.descriptor.kind == "zero-shot":
        raise ConfigError(
            f"{model_name} is a zero-shot model: train it on the slide with "
            "`srgan-sqe zero-shot SLIDE --region X,Y,W,H --out M.safetensors`"
        )
    return model


def start_model(kind: JobKind, parent: Any = None, network: ZSSRConfig | None = None) -> SRModel:
    """The model a job trains: a fresh ZSSR network (`network`: its config, default the
    paper's 8 x 64) for 'zero-shot', else `parent`."""
    if kind != "zero-shot":
        return parent
    from napari_srgan_sqe.training.zero_shot import ZERO_SHOT_MODEL, new_zssr

    return new_zssr(name=ZERO_SHOT_MODEL, network=network)


@dataclass(frozen=True)
class Job:
    """A job ready to run: what `run_job` trains, from what, and what its file records."""

    kind: JobKind
    model: SRModel = field(repr=False)
    """The start: the parent model, or a fresh ZSSR network for 'zero-shot'."""
    regions: list[Any] = field(repr=False)
    """The regions' pixels (LR, or (LR, HR) pairs), or for 'adapt' the real LR images."""
    config: FinetuneConfig | AdaptSettings
    metadata: dict[str, str]
    """Written into the new model's file: the regions, their source, the training data."""

    @property
    def tag(self) -> str:
        """The version's tag in its file name (`version_path`)."""
        return "adapt" if self.kind == "adapt" else "ft"


def make_job(
    kind: JobKind,
    lr: Any,
    rects: Sequence[Sequence[int]],
    *,
    model: SRModel,
    config: FinetuneConfig | AdaptSettings,
    hr: Any = None,
    source: str | None = None,
    hr_source: str | None = None,
) -> Job:
    """Read the rectangles (x, y, w, h, LR level-0 px) of `lr` (a Slide, a level or an
    array; `hr` s x it, for paired fine-tuning), checking them first (RegionError),
    and describe them in the metadata. `source`: the slide's file name (None: "the
    slide in view"), recorded as `finetune_source` with `hr_source` for the commands."""
    from napari_srgan_sqe.training.regions import cut_regions
    from napari_srgan_sqe.training.unpaired_data import real_lr_image

    where = source or "the slide in view"
    regions_json = json.dumps([dict(zip("xywh", r, strict=True)) for r in rects])
    meta = {"finetune_regions": regions_json}
    if kind == "adapt":  # adaptation reads its real LR from the level in patches
        regions: list[Any] = [real_lr_image(lr, rects, where)]
        meta["training_data"] = (
            f"adapted (unpaired) to {len(rects)} region(s) of {where}; clean LR from the "
            "bundled sample slide"
        )
    else:
        cfg = cast("FinetuneConfig", config)
        regions = cut_regions(lr, rects, hr=hr, scale=model.scale, config=cfg)
        if kind == "zero-shot":
            meta = {"training_data": f"zero-shot on {len(regions)} region(s) of {where}", **meta}
    if source is not None:
        meta["finetune_source"] = source
        if kind == "finetune":
            meta["finetune_hr_source"] = hr_source or ""
    return Job(kind, model, regions, config, meta)


@dataclass(frozen=True)
class Saved:
    """A job's last event: the result, and the file written (None if not improved)."""

    result: FinetuneResult
    path: Path | None


@dataclass(frozen=True)
class Failed:
    """A worker caught an error (passed as an event: superqt drops RuntimeErrors)."""

    error: BaseException


def _events(
    job: Job, *, stop_event: threading.Event, device: str, name: str
) -> Iterator[FinetuneEvent]:
    """The library's event stream of `job` (its checks raise now, before any training)."""
    # the modules, not their functions: looked up when the job runs (tests replace them)
    from napari_srgan_sqe.training import adapt, finetune, zero_shot

    common: dict[str, Any] = {"stop_event": stop_event, "device": device, "name": name}
    common["metadata"] = job.metadata
    if job.kind == "adapt":
        settings = cast("AdaptSettings", job.config)
        return cast(
            "Iterator[FinetuneEvent]",
            adapt.iter_adapt(job.model, job.regions, settings=settings, **common),
        )
    config = cast("FinetuneConfig", job.config)
    if job.kind == "zero-shot":
        return zero_shot.iter_zero_shot(job.regions, model=job.model, config=config, **common)
    return finetune.iter_finetune(job.model, job.regions, config=config, **common)


def run_job(
    job: Job,
    path: Path,
    *,
    stop_event: threading.Event,
    device: str = "auto",
    on_saved: Callable[[SRModel], Any] | None = None,
) -> Iterator[FinetuneEvent | Saved]:
    """Check `job` now (errors raise here), then return its event stream: Started, Step,
    Validated, and last `Saved` in place of `Finished`. When validation improved, the
    new model (named after `path`) is written to `path` and passed to `on_saved`."""
    events = _events(job, stop_event=stop_event, device=device, name=path.stem)
    return _saving(events, path, on_saved)


def _saving(
    events: Iterator[FinetuneEvent], path: Path, on_saved: Callable[[SRModel], Any] | None
) -> Generator[FinetuneEvent | Saved, None, None]:
    from napari_srgan_sqe.models.modelfile import save_model
    from napari_srgan_sqe.training.finetune import Finished

    for ev in events:
        if not isinstance(ev, Finished):
            yield ev
            continue
        saved = None
        if ev.result.improved:
            path.parent.mkdir(parents=True, exist_ok=True)
            saved = save_model(ev.result.model, path)
            if on_saved is not None:
                on_saved(ev.result.model)
        yield Saved(ev.result, saved)


def finetune_job(
    kind: JobKind,
    lr_level: Any,
    rects: list[tuple[int, int, int, int]],
    *,
    config: FinetuneConfig | AdaptSettings,
    stop_event: threading.Event,
    folder: Path,
    parent: Any = None,
    hr_level: Any = None,
    network: ZSSRConfig | None = None,
    device: str = "auto",
    on_saved: Callable[[SRModel], Any] | None = None,
) -> Generator[Any, None, None]:
    """A GUI worker's body: choose the model (`start_model`), read the regions, train,
    save the new version in `folder` (`version_path`) and pass it to `on_saved` (the
    widget switches its SR pyramid to it).

    Yields the library's events (Started, Step, Validated), then `Saved`, or `Failed`
    on any error (torch raises RuntimeErrors, which superqt's generator worker would
    swallow without a signal). Touches no viewer object.
    """
    try:
        model = start_model(kind, parent, network)
        job = make_job(kind, lr_level, rects, model=model, config=config, hr=hr_level)
        path = version_path(folder, model.name, job.tag)
        yield from run_job(job, path, stop_event=stop_event, device=device, on_saved=on_saved)
    except Exception as exc:  # noqa: BLE001 - reported to the user on the GUI thread
        yield Failed(exc)
