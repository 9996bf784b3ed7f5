"""Project-wide gates: lint, layering, manifest, installed package contents."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_layering_contracts_hold():
    """GUI code only under _napari; config free of torch; layers point down."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (it is in the test extra)")
    res = _run(exe, "--config", str(ROOT / "pyproject.toml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_import_cycle_in_the_package():
    """No module imports (at the top or inside a function) a module that imports it
    back, directly or through others: a circle hidden by a function-local import is a
    circle still (import-linter's graph sees both kinds)."""
    import grimp
    import networkx

    graph = grimp.build_graph("napari_srgan_sqe")
    edges = [
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if b.startswith("napari_srgan_sqe") and a != b
    ]
    cycles = sorted(networkx.simple_cycles(networkx.DiGraph(edges)), key=len)
    assert not cycles, [" -> ".join([*c, c[0]]) for c in cycles[:5]]


def test_ruff_clean():
    res = _run(sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks", "experiments")
    assert res.returncode == 0, res.stdout + res.stderr


def test_npe2_manifest_validates():
    res = _run(sys.executable, "-m", "npe2", "validate", "napari-srgan-sqe")
    assert res.returncode == 0 and "valid" in (res.stdout + res.stderr).lower(), (
        res.stdout + res.stderr
    )


def test_manifest_declares_menus_for_the_three_widgets():
    """Layers > Filters > "Super-resolution (SRGAN-SQE)" holds Enhance, Compare and
    Fine-tune; Compare is also under Layers > Measure. Every menu item is a widget
    command, and the napari menus used are ones plugins may contribute to."""
    from npe2 import PluginManifest

    mf = PluginManifest.from_file(ROOT / "napari.yaml")
    PluginManifest.model_validate(mf.model_dump())  # the schema accepts it as a whole
    contrib = mf.contributions
    widgets = {w.command: w.display_name for w in contrib.widgets}
    submenus = {s.id: s.label for s in contrib.submenus}
    menus = contrib.menus
    top = menus["napari/layers/filter"]
    assert [m.submenu for m in top] == ["napari-srgan-sqe.super_resolution"]
    assert submenus["napari-srgan-sqe.super_resolution"] == "Super-resolution (SRGAN-SQE)"
    inner = [widgets[m.command] for m in menus["napari-srgan-sqe.super_resolution"]]
    assert inner == ["Enhance", "Compare", "Fine-tune"]
    assert [widgets[m.command] for m in menus["napari/layers/measure"]] == ["Compare"]
    contributable = {"napari/layers/filter", "napari/layers/measure"}
    assert {k for k in menus if k.startswith("napari/")} <= contributable


def test_license_file_names_the_code_and_the_weights_licences():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "CC BY-NC-SA 4.0" in text and "srgan-sqe-he-x4" in text


def test_manifest_ships_inside_the_package():
    """The napari.manifest entry point resolves to the same file as the top-level manifest."""
    eps = [
        ep for ep in metadata.entry_points(group="napari.manifest") if ep.name == "napari-srgan-sqe"
    ]
    assert eps, "napari.manifest entry point missing"
    shipped = resources.files("napari_srgan_sqe").joinpath("napari.yaml").read_text()
    assert shipped == (ROOT / "napari.yaml").read_text()


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; from napari_srgan_sqe.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "assert 'napari' not in sys.modules, 'napari imported by --help'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_no_pickled_model_files_shipped():
    pkg = Path(resources.files("napari_srgan_sqe"))
    bad = [p for p in pkg.rglob("*") if p.suffix in {".pt", ".pth", ".pkl", ".pickle", ".ckpt"}]
    assert not bad
