"""The bundled files are found in a checkout and in an installed wheel, and the wheel carries them all."""

import subprocess
import tomllib
from pathlib import Path

from mlx_sd import resources

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = {"resources/icon/render_icon.py"}  # the script that draws the icon, not an asset


def test_checkout_resources_are_found():
    assert resources.resource("clip_tokenizer", "vocab.json").is_file()


def test_installed_location_is_used_when_the_checkout_has_none(tmp_path, monkeypatch):
    installed = tmp_path / "share" / "mlx-sd" / "resources"
    (installed / "clip_tokenizer").mkdir(parents=True)
    monkeypatch.setattr(resources, "_CANDIDATES", (tmp_path / "missing", installed))
    assert resources.resource("demo") == installed / "demo"


def test_wheel_data_files_cover_every_tracked_resource():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {
        path.relative_to(ROOT).as_posix()
        for target, patterns in table.items()
        for pattern in patterns
        for path in ROOT.glob(pattern)
        if target == "share/mlx-sd/" + path.parent.relative_to(ROOT).as_posix()
    }
    tracked = subprocess.run(
        ["git", "ls-files", "resources"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(tracked) - NOT_SHIPPED <= shipped
