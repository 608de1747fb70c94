"""The plugin is discoverable by npe2 from the editable install and from a built wheel."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from npe2 import PluginManifest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"napari-glimpse.get_reader", "napari-glimpse.write_geojson",
            "napari-glimpse.data.cmu1_small_region", "napari-glimpse.data.tumour_mosaic"}


def _check(manifest: PluginManifest) -> None:
    assert manifest.name == "napari-glimpse"
    assert {c.id for c in manifest.contributions.commands} >= EXPECTED
    assert manifest.contributions.readers and manifest.contributions.writers
    manifest.validate_imports()  # every python_name resolves


def test_manifest_from_installed_distribution():
    _check(PluginManifest.from_distribution("napari-glimpse"))


def test_npe2_validate_cli():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", str(ROOT / "napari.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_manifest_is_the_root_manifest():
    assert (ROOT / "src/napari_glimpse/napari.yaml").read_text() == (ROOT / "napari.yaml").read_text()


@pytest.mark.slow
def test_built_wheel_carries_a_real_manifest(tmp_path):
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)]
    if importlib.util.find_spec("hatchling"):
        cmd.insert(3, "--no-isolation")  # offline when the backend is installed
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = tmp_path.glob("napari_glimpse-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_glimpse/_sample_data/cmu-1-small-region.svs" in names
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari_glimpse:napari.yaml" in zf.read(entry).decode()
        zf.extractall(tmp_path / "unpacked")
    manifest_file = tmp_path / "unpacked/napari_glimpse/napari.yaml"
    assert manifest_file.is_file() and not manifest_file.is_symlink()
    manifest = PluginManifest.from_file(manifest_file)
    assert {c.id for c in manifest.contributions.commands} >= EXPECTED


def test_every_core_module_imports_without_qt():
    # Every module of the package but the Qt glue (napari_glimpse._napari) and __main__ (it
    # runs the CLI), with the Qt bindings blocked: a core module that imports Qt, even
    # indirectly, fails here.
    code = (
        "import sys\n"
        "for qt in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6'):\n"
        "    sys.modules[qt] = None\n"
        "import importlib, pkgutil\n"
        "import napari_glimpse\n"
        "names = [m.name for m in pkgutil.walk_packages(napari_glimpse.__path__, 'napari_glimpse.')\n"
        "         if not m.name.startswith('napari_glimpse._napari') and m.name != 'napari_glimpse.__main__']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert 'napari' not in sys.modules, 'the core imported napari'\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 40  # the walk found the package, not an empty path
