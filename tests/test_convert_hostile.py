"""Hostile inputs and hostile ends for the converter: signals mid-conversion, what a killed run left,
paths that are not files, damaged headers and tensors of the wrong rank. Each ends in one clear line
(or a clean stop), never a traceback, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from convert import ConversionError, convert_model
from convert.local_paths import looks_like_path

REPO = Path(__file__).resolve().parents[1]

# Runs `mlx-sd convert` with a writer that announces itself and then waits, so the test can signal it
# at a known point: after the first component file of the staging folder is on disk.
_SLOW_CONVERT = """
import sys, time
from mlx_sd import model_format
real = model_format.write_safetensors
def slow(path, arrays, metadata):
    real(path, arrays, metadata)
    print("WRITING", flush=True)
    time.sleep(60)
model_format.write_safetensors = slow
from cli.main import main
sys.exit(main(["convert", sys.argv[1], sys.argv[2]]))
"""


def _start(source: Path, output: Path, scratch: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CONVERT, str(source), str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith("WRITING"):
            return process
    raise AssertionError(process.stderr.read())  # type: ignore[union-attr]


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_sigterm_stops_like_ctrl_c_and_leaves_nothing(tiny_models, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = _start(tiny_models.single_file("sd1"), tmp_path / "models" / "out", scratch)
    assert any(".partial-" in name for name in _left(tmp_path / "models"))
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("stopped")
    assert _left(tmp_path) == ["tmp"] and _left(scratch) == []  # not even the parent folder it created


def test_a_killed_conversions_leftovers_are_removed_by_the_next(tiny_models, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    models = tmp_path / "models"
    process = _start(tiny_models.single_file("sd1"), models / "out", scratch)
    process.kill()
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert len(_left(models)) == 1 and len(_left(scratch)) == 1  # the staging folder and the scratch folder
    (models / f".other.partial-{os.getpid()}-0000").mkdir()  # a live conversion's: kept
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    convert_model(tiny_models.single_file("sd1"), models / "again")
    assert _left(models) == [f".other.partial-{os.getpid()}-0000", "again"]
    assert _left(scratch) == []


@pytest.mark.parametrize("name", ["./missing.safetensors", "~/no/such/model.ckpt", "a/b/c", "model.safetensors", "x.pt"])
def test_paths_that_do_not_exist_are_no_such_file_not_a_hub_lookup(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("convert.hub.fetch", lambda *a: pytest.fail("sent to the Hub"))
    with pytest.raises(ConversionError, match="no such file or folder$"):
        convert_model(name, tmp_path / "out")
    assert _left(tmp_path) == []


def test_symlink_loops_dangling_links_and_fifos(tmp_path, monkeypatch):
    monkeypatch.setattr("convert.hub.fetch", lambda *a: pytest.fail("sent to the Hub"))
    monkeypatch.chdir(tmp_path)
    os.symlink("loop-b", "loop-a")
    os.symlink("loop-a", "loop-b")
    os.symlink("nowhere/x", "dangling")
    os.mkfifo("pipe.safetensors")
    with pytest.raises(ConversionError, match="loop-a: no such file \\(a loop of symbolic links\\)"):
        convert_model("loop-a", tmp_path / "out")
    with pytest.raises(ConversionError, match="dangling: no such file or folder"):
        convert_model("dangling", tmp_path / "out")
    started = time.perf_counter()  # opening a FIFO would block for ever: it must be refused unopened
    with pytest.raises(ConversionError, match="pipe.safetensors is not a regular file \\(a FIFO, device or socket\\)"):
        convert_model("pipe.safetensors", tmp_path / "out")
    with pytest.raises(ConversionError, match="/dev/null is not a regular file"):
        convert_model("/dev/null", tmp_path / "out")
    assert time.perf_counter() - started < 5


def test_repo_ids_still_look_like_repo_ids():
    assert not looks_like_path("stabilityai/sdxl-turbo") and not looks_like_path("runwayml/stable-diffusion-v1.5")
    assert looks_like_path("models/sd/v1.safetensors") and looks_like_path("../model") and looks_like_path("C:\\x")


def test_a_deeply_nested_header_is_one_line(tmp_path):
    path = tmp_path / "nested.safetensors"
    text = b"[" * 5_000_000 + b"]" * 5_000_000
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(ConversionError, match="nested.safetensors is not a valid safetensors file: its header nests too deeply"):
        convert_model(path, tmp_path / "out")


@pytest.fixture(scope="module")
def sd1_state(tiny_models):
    return load_file(str(tiny_models.single_file("sd1")))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_tensor_of_unexpected_rank_is_an_error_naming_it(sd1_state, tmp_path_factory, data):
    """Any one tensor of a real checkpoint reshaped to another rank: a ConversionError naming a key."""
    weights = sorted(k for k, v in sd1_state.items() if k.endswith((".weight", ".bias")) and v.numel() > 1)
    key = data.draw(st.sampled_from(weights))
    tensor = sd1_state[key]
    ranks = [(tensor.numel(),), (1, *tensor.shape), (*tensor.shape, 1), ()]
    shape = data.draw(st.sampled_from([shape for shape in ranks if len(shape) != tensor.dim()]))
    if shape == ():
        tensor = tensor.flatten()[:1]
    folder = tmp_path_factory.mktemp("rank")
    path = folder / "ranked.safetensors"
    save_file({**sd1_state, key: tensor.reshape(shape).contiguous()}, str(path))
    with pytest.raises(ConversionError) as raised:
        convert_model(path, folder / "out")
    message = str(raised.value)
    assert "\n" not in message and not (folder / "out").exists()
    assert "shape" in message, message
