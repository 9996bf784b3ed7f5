"""Fixtures of the GUI tests: a tiny random-weight model, a bad model file, a sample crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "src/napari_srgan_sqe/data/CMU-1-Small-Region.svs"
PLUGIN = "napari-srgan-sqe"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .safetensors file of the 'tiny' generator with seeded random weights."""
    import torch

    from napari_srgan_sqe.config import ModelConfig, generator_preset
    from napari_srgan_sqe.models.modelfile import new_model, save_model

    torch.manual_seed(0)
    model = new_model(ModelConfig(name="tiny-test", generator=generator_preset("tiny")))
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.fixture
def bad_model(tmp_path: Path) -> Path:
    """A text file pretending to be a model."""
    path = tmp_path / "not-a-model.safetensors"
    path.write_text("this is not a safetensors file\n")
    return path


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """The bundled H&E sample slide (CMU-1-Small-Region.svs, 2220 x 2967)."""
    return SAMPLE


@pytest.fixture(scope="session")
def sample_hr() -> np.ndarray:
    """A 384 x 512 crop of the bundled H&E sample slide (HR, uint8 RGB)."""
    from napari_srgan_sqe import open_slide

    return np.asarray(open_slide(SAMPLE).levels[0][1000:1384, 800:1312])


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch: pytest.MonkeyPatch):
    """A viewer whose plugin proxies refuse attribute writes from worker threads."""
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    return make_napari_viewer()


@pytest.fixture
def async_viewer(make_napari_viewer, monkeypatch: pytest.MonkeyPatch):
    """Like `viewer`, with napari's asynchronous slicing on (reset after the test)."""
    from napari.settings import get_settings

    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    get_settings().experimental.async_ = True  # read when the viewer's slicer is made
    return make_napari_viewer()


@pytest.fixture
def errors():
    """A function listing the error notifications napari received during the test."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    start = len(notification_manager.records)

    def messages() -> list[str]:
        return [
            str(n.message)
            for n in notification_manager.records[start:]
            if n.severity == NotificationSeverity.ERROR
        ]

    return messages
