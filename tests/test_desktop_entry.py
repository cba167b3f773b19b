"""The Linux launcher (`mlx-sd-app --install-desktop-entry`) and the app icon files."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import desktop_entry
from app.desktop_entry import (
    ICON_DIR,
    ICON_SIZES,
    data_home,
    desktop_entry_text,
    install_desktop_entry,
    quote_exec_argument,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.qt_log_level_fail("WARNING")


def read_desktop_file(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "[Desktop Entry]"
    return dict(line.split("=", 1) for line in lines[1:] if line)


def split_exec(value: str) -> list[str]:
    """Read an Exec value back as the Desktop Entry spec says: string escapes first, then quoting."""
    unescaped, i = "", 0
    while i < len(value):  # the general string escapes: \\ \s \n \t \r
        if value[i] == "\\" and i + 1 < len(value):
            unescaped += {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[value[i + 1]]
            i += 2
        else:
            unescaped += value[i]
            i += 1
    args, current, quoted, i, started = [], "", False, 0, False
    while i < len(unescaped):
        c = unescaped[i]
        if quoted and c == "\\":
            current += unescaped[i + 1]
            i += 2
            continue
        if c == '"':
            quoted, started = not quoted, True
        elif c == " " and not quoted:
            if started or current:
                args.append(current)
            current, started = "", False
        else:
            current += c
        i += 1
    if started or current:
        args.append(current)
    return [a.replace("%%", "%") for a in args]


def test_install_writes_launcher_and_icons(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    installed = install_desktop_entry(command=["/opt/mlx sd/bin/mlx-sd-app"])
    assert installed.desktop_file == tmp_path / "data" / "applications" / "mlx-sd.desktop"
    assert installed.desktop_file.stat().st_mode & 0o111
    entry = read_desktop_file(installed.desktop_file)
    assert entry["Type"] == "Application" and entry["Name"] == "mlx-sd" and entry["Terminal"] == "false"
    assert split_exec(entry["Exec"]) == ["/opt/mlx sd/bin/mlx-sd-app"]
    icon = Path(entry["Icon"])
    assert icon == tmp_path / "data" / "icons" / "hicolor" / "256x256" / "apps" / "mlx-sd.png"
    assert [p.parts[-3] for p in installed.icons] == [f"{s}x{s}" for s in ICON_SIZES]
    for path in installed.icons:
        size = int(path.parts[-3].split("x")[0])
        assert Image.open(path).size == (size, size)
    assert install_desktop_entry(command=["x"]).desktop_file == installed.desktop_file  # again: replaced
    assert not list((tmp_path / "data" / "applications").glob(".*"))


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils is not installed")
def test_the_launcher_passes_desktop_file_validate(tmp_path):
    installed = install_desktop_entry(tmp_path, command=[sys.executable, "-m", "app"])
    result = subprocess.run(["desktop-file-validate", str(installed.desktop_file)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_data_home_follows_xdg():
    assert data_home({"XDG_DATA_HOME": "/x/data"}) == Path("/x/data")
    assert data_home({"XDG_DATA_HOME": "relative/ignored"}) == Path.home() / ".local" / "share"
    assert data_home({}) == Path.home() / ".local" / "share"


@pytest.mark.parametrize("argument", [
    "plain", "/with space/app", 'say "hi"', "cost $5 `now`", "back\\slash", "100%", "tilde~", "",
])
def test_exec_quoting_round_trips(argument):
    text = desktop_entry_text(["/bin/prog", argument], Path("/i.png"))
    exec_value = read_desktop_file_text(text)["Exec"]
    assert split_exec(exec_value) == ["/bin/prog", argument]
    assert quote_exec_argument("plain") == "plain"


def read_desktop_file_text(text):
    return dict(line.split("=", 1) for line in text.splitlines()[1:] if line)


def test_launcher_command_prefers_the_gui_script_beside_python(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "mlx-sd-app"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert desktop_entry.launcher_command() == [str(script)]
    script.unlink()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert desktop_entry.launcher_command() == [str(tmp_path / "bin" / "python"), "-m", "app"]


def test_main_says_where_and_refuses_other_platforms(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert desktop_entry.main("darwin") == 2
    assert "scripts/build_macos_app.sh" in capsys.readouterr().err
    assert not (tmp_path / "applications").exists()
    assert desktop_entry.main("linux") == 0
    assert f"installed {tmp_path / 'applications' / 'mlx-sd.desktop'}" in capsys.readouterr().out


def test_mlx_sd_app_option_installs_without_a_display(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "QT_QPA_PLATFORM": "minimal-not-used"}
    result = subprocess.run([sys.executable, "-m", "app", "--install-desktop-entry"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "applications" / "mlx-sd.desktop").is_file()


def render_module():
    spec = importlib.util.spec_from_file_location("render_icon", ICON_DIR / "render_icon.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_icon_files_are_what_the_script_draws():
    render = render_module()
    drawn = np.asarray(render.render(), dtype=np.int16)
    committed = np.asarray(Image.open(ICON_DIR / "mlx-sd-1024.png").convert("RGBA"), dtype=np.int16)
    assert drawn.shape == committed.shape == (1024, 1024, 4)
    assert np.abs(drawn - committed).mean() < 1.0  # regenerate with render_icon.py when the drawing changes
    assert committed[0, 0, 3] == 0 and committed[512, 512, 3] == 255  # transparent margin, opaque body
    for size in render.SIZES:
        image = Image.open(ICON_DIR / f"mlx-sd-{size}.png")
        assert image.size == (size, size) and image.mode == "RGBA"


def test_window_icon_has_every_size(qapp):
    icon = desktop_entry.app_icon()
    assert not icon.isNull()
    assert {s.width() for s in icon.availableSizes()} >= set(ICON_SIZES)


def stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def python_in(env: Path) -> Path:
    """`env/bin/python`: this interpreter under another path, seeing the packages this one sees. A
    symlink alone loses a virtual environment (Python finds a venv from the pyvenv.cfg beside the path
    it was started as, then resolves the symlink to the base Python), so inside one its pyvenv.cfg and
    lib folder come along."""
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    if sys.prefix != sys.base_prefix:
        shutil.copy(Path(sys.prefix) / "pyvenv.cfg", env / "pyvenv.cfg")
        (env / "lib").symlink_to(Path(sys.prefix) / "lib")
    return env / "bin" / "python"


def test_python_in_another_path_sees_the_same_packages(tmp_path):
    python = python_in(tmp_path / "env")
    query = "import site, sys; print(sorted(str(__import__('pathlib').Path(p).resolve()) for p in site.getsitepackages()))"
    ours = subprocess.run([sys.executable, "-c", query], capture_output=True, text=True, check=True).stdout
    assert subprocess.run([str(python), "-c", query], capture_output=True, text=True, check=True).stdout == ours


def test_macos_bundle_script_with_stand_ins_for_the_mac_tools(tmp_path):
    """scripts/build_macos_app.sh cannot run here; with stand-ins for uname, iconutil and plutil it shows
    that it lays out the bundle, names the iconset as iconutil wants and writes a launcher that works
    with a Python path holding a space and a quote."""
    tools = tmp_path / "tools"
    tools.mkdir()
    stand_in(tools, "uname", "echo Darwin")
    stand_in(tools, "plutil", 'test "$1" = -lint && test -f "$2"')
    # iconutil --convert icns --output OUT ICONSET: keep the iconset beside OUT for inspection
    stand_in(tools, "iconutil", 'test "$1 $2 $3" = "--convert icns --output" && cp -R "$5" "$4.iconset" && echo icns > "$4"')
    python = python_in(tmp_path / "my env's")
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", str(REPO / "scripts" / "build_macos_app.sh"), str(python), str(tmp_path / "dist")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    app = tmp_path / "dist" / "mlx-sd.app" / "Contents"
    import plistlib

    import mlx_sd

    info = plistlib.loads((app / "Info.plist").read_bytes())
    assert (info["CFBundleExecutable"], info["CFBundleIconFile"], info["CFBundlePackageType"]) == ("mlx-sd", "mlx-sd", "APPL")
    assert info["CFBundleShortVersionString"] == mlx_sd.__version__
    iconset = app / "Resources" / "mlx-sd.icns.iconset"
    names = sorted(p.name for p in iconset.iterdir())
    assert len(names) == 10
    for name in names:
        base = int(name.split("_")[1].split("x")[0])
        assert Image.open(iconset / name).size == ((base * 2,) * 2 if "@2x" in name else (base, base))
    launcher = app / "MacOS" / "mlx-sd"
    assert launcher.stat().st_mode & 0o111
    run = subprocess.run([str(launcher), "--install-desktop-entry"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}, timeout=120)
    assert run.returncode == 0, run.stderr  # the bundle's launcher started `python -m app`
    assert (tmp_path / "data" / "applications" / "mlx-sd.desktop").is_file()


def test_macos_bundle_script_refuses_other_systems(tmp_path):
    result = subprocess.run(["sh", str(REPO / "scripts" / "build_macos_app.sh"), sys.executable, str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "run it on a Mac" in result.stderr
    assert not (tmp_path / "mlx-sd.app").exists()
