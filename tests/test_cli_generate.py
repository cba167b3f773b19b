"""`mlx-sd generate` and `mlx-sd samplers`, in process through cli.main.main and as a subprocess, on a
tiny random SD1-like model folder written with model_format.write_model; and mlx_sd.output_files."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from model_folders import CONFIGS, write_random_model
from PIL import Image

from cli.generate import ProgressBar
from cli.main import main
from mlx_sd import model_paths
from mlx_sd.config import SourceInfo
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import parse_infotext, request_from_infotext
from mlx_sd.model_format import MODEL_JSON
from mlx_sd.model_paths import DEMO_NAME, resolve_model_folder
from mlx_sd.output_files import next_number, reserve_path, save_numbered
from mlx_sd.request import Progress
from mlx_sd.samplers import SAMPLERS
from mlx_sd.schedules import SCHEDULES

REPO = Path(__file__).resolve().parents[1]
SHA256 = "0123456789abcdef" * 4
CONFIG = dataclasses.replace(
    CONFIGS["sd1"], dtype="float32", source=SourceInfo(name="tiny-sd1.safetensors", sha256=SHA256)
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "tiny-sd1"
    write_random_model(folder, CONFIG, seed=3)
    return folder


def generate(capsys, model: Path, out: Path, *args: str) -> tuple[int, list[Path], str]:
    """Run `mlx-sd generate` in process: (exit code, printed paths, stderr)."""
    code = main(["generate", "--model", str(model), "--output", str(out), *args])
    captured = capsys.readouterr()
    paths = [Path(line) for line in captured.out.splitlines()]
    return code, paths, captured.err


# ---------------------------------------------------------------------------------------------
# mlx_sd.output_files and mlx_sd.model_paths


def test_numbers_count_up_from_the_highest_existing(tmp_path: Path):
    assert next_number(tmp_path / "missing") == 1
    assert next_number(tmp_path) == 1
    for name in ("00002-5.png", "00041-7.png", "notes.txt", "7x.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_number(tmp_path) == 42
    assert reserve_path(tmp_path, 9).name == "00042-9.png"
    assert reserve_path(tmp_path, 9).name == "00043-9.png"


def test_reserving_never_hands_out_a_name_twice_under_concurrency(tmp_path: Path):
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda k: reserve_path(tmp_path, 1), range(64)))
    assert len(set(paths)) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{n:05d}-1.png" for n in range(1, 65)]


def test_save_numbered_never_overwrites_and_cleans_up_a_failed_save(tmp_path: Path):
    existing = tmp_path / "00001-3.png"
    existing.write_bytes(b"keep me")
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    path = save_numbered(image, tmp_path, 3, "a prompt\nSteps: 1, Sampler: Euler, Seed: 3")
    assert path.name == "00002-3.png" and existing.read_bytes() == b"keep me"
    assert read_infotext(path) == "a prompt\nSteps: 1, Sampler: Euler, Seed: 3"
    with pytest.raises(Exception):
        save_numbered("not an image", tmp_path, 3, None)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001-3.png", "00002-3.png"]


def test_model_names(tmp_path: Path):
    assert resolve_model_folder(tmp_path / "m") == tmp_path / "m"
    demo = tmp_path / "demo-folder"
    with pytest.raises(ValueError, match="demo model is not installed"):
        resolve_model_folder(DEMO_NAME, demo_folder=demo)
    demo.mkdir()
    (demo / MODEL_JSON).write_text("{}")
    assert resolve_model_folder(DEMO_NAME, demo_folder=demo) == demo


# ---------------------------------------------------------------------------------------------
# mlx-sd samplers


def test_samplers_lists_every_sampler_with_its_default_schedule(capsys):
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for info in SAMPLERS:
        assert any(line.split("  ")[1:2] == [info.name] for line in lines), info.name
    assert any(line.startswith("  DPM++ 2M ") and "Karras" in line for line in lines)
    assert any(line.startswith("  DPM++ 2M SDE ") and "Exponential" in line for line in lines)
    assert any(line.startswith("  Euler a ") and "Uniform" in line for line in lines)
    schedules = lines[lines.index("Schedules:") + 1 :]
    assert [line.split("  ")[1] for line in schedules] == [s.name for s in SCHEDULES]


# ---------------------------------------------------------------------------------------------
# mlx-sd generate, in process


def test_progress_bar_in_place_on_a_terminal_and_as_lines_in_a_log():
    live = io.StringIO()
    bar = ProgressBar(live, live=True, width=8)
    bar.start_batch(1, 2)
    for step in range(1, 5):
        bar(Progress(step, 4, 0, 1))
    text = live.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "\rbatch 2/2 [##------] 1/4 " in text and "\rbatch 2/2 [########] 4/4 " in text
    assert re.search(r"4/4 \d+\.\d\d steps/s\n$", text)

    log = io.StringIO()
    bar = ProgressBar(log, live=False, interval=3600)
    bar.start_batch(0, 1)
    for step in range(1, 11):
        bar(Progress(step, 10, 0, 1))
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["step 1/10", "step 10/10"]  # first, last, none between


def test_generate_writes_numbered_pngs_whose_metadata_round_trips(capsys, model: Path, tmp_path: Path):
    out = tmp_path / "out"
    code, paths, err = generate(
        capsys, model, out, "a (red:1.2) cube, studio light", "--negative", "blurry", "--steps", "3",
        "--cfg", "5.5", "--sampler", "euler", "--schedule", "karras", "--seed", "1234", "--batch-size", "2",
        "--batch-count", "2", "--clip-skip", "2",
    )
    assert code == 0, err
    assert [p.name for p in paths] == ["00001-1234.png", "00002-1235.png", "00003-1236.png", "00004-1237.png"]
    assert sorted(out.iterdir()) == sorted(paths)
    assert "steps/s" in err
    for path, seed in zip(paths, range(1234, 1238)):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"
        text = read_infotext(path)
        request = request_from_infotext(text)
        assert request.prompt == "a (red:1.2) cube, studio light"
        assert request.negative_prompt == "blurry"
        assert (request.steps, request.cfg_scale, request.seed) == (3, 5.5, seed)
        assert (request.sampler, request.schedule) == ("Euler", "Karras")  # canonical A1111 labels
        assert (request.width, request.height, request.clip_skip) == (64, 64, 2)
        params = parse_infotext(text).params
        assert params["Model hash"] == SHA256[:10] and params["Model"] == "tiny-sd1"


def test_precision_bfloat16_reaches_the_pipeline_or_is_refused_in_one_line(capsys, model: Path, tmp_path: Path, monkeypatch):
    from mlx_sd import device
    from mlx_sd.cpu import kernels as cpu_kernels
    from mlx_sd.pipeline import Pipeline

    loaded = []
    real = Pipeline.load.__func__
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls, *a, **k: loaded.append(k) or real(cls, *a, **k)))
    if device.current_device() == "cpu" and cpu_kernels.bf16_products():
        code, paths, err = generate(capsys, model, tmp_path / "out", "a cube", "--steps", "1", "--precision", "bfloat16")
        assert code == 0 and len(paths) == 1, err
        assert loaded == [{"precision": "bfloat16"}]
    monkeypatch.setattr(cpu_kernels, "bf16_products", lambda: False)
    if device.current_device() == "cpu":
        code, paths, err = generate(capsys, model, tmp_path / "none", "a cube", "--steps", "1", "--precision", "bfloat16")
        assert code != 0 and paths == [] and len(err.strip().splitlines()) == 1, err
        assert "AVX512_BF16" in err and not (tmp_path / "none").exists()


def test_same_seed_same_image_and_a_second_run_never_overwrites(capsys, model: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ("a blue sphere", "--steps", "2", "--seed", "77")
    code, first, _ = generate(capsys, model, out, *args)
    assert code == 0
    before = first[0].read_bytes()
    code, second, _ = generate(capsys, model, out, *args)
    assert code == 0
    assert [p.name for p in first + second] == ["00001-77.png", "00002-77.png"]
    assert first[0].read_bytes() == before
    assert np.array_equal(np.asarray(Image.open(first[0])), np.asarray(Image.open(second[0])))


def test_random_seed_is_reported_in_the_name_and_metadata(capsys, model: Path, tmp_path: Path):
    code, paths, _ = generate(capsys, model, tmp_path, "noise", "--steps", "1", "--cfg", "1")
    assert code == 0 and len(paths) == 1
    seed = int(paths[0].stem.split("-", 1)[1])
    assert request_from_infotext(read_infotext(paths[0])).seed == seed


def test_img2img_and_inpainting_from_files(capsys, model: Path, tmp_path: Path):
    init = tmp_path / "init.png"
    Image.new("RGBA", (80, 72), (200, 30, 30, 128)).save(init)  # any size and mode
    mask = tmp_path / "mask.png"
    picture = Image.new("L", (80, 72), 0)
    picture.paste(255, (20, 20, 60, 52))
    picture.save(mask)
    out = tmp_path / "out"
    code, paths, err = generate(
        capsys, model, out, "a cat", "--steps", "4", "--seed", "5", "--init-image", str(init), "--strength", "0.5",
    )
    assert code == 0, err
    with Image.open(paths[0]) as image:
        assert image.size == (80, 72)  # the init image's size by default
    params = parse_infotext(read_infotext(paths[0])).params
    assert params["Denoising strength"] == "0.5"
    code, paths, err = generate(
        capsys, model, out, "a cat", "--steps", "2", "--seed", "5", "--init-image", str(init), "--mask", str(mask),
        "--mask-blur", "2", "--width", "64", "--height", "64",
    )
    assert code == 0, err
    assert parse_infotext(read_infotext(paths[0])).params["Mask blur"] == "2"


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--sampler", "Euler z"), "sampler = 'Euler z' is not allowed: one of DPM++ 2M, "),
        (("--schedule", "Cosine"), "schedule = 'Cosine' is not allowed: one of Automatic, "),
        (("--width", "100"), "width = 100 is not allowed: a multiple of 8 from 64 to 2048"),
        (("--steps", "0"), "steps = 0 is not allowed: a whole number from 1 to 1000"),
        (("--strength", "1.5", "--init-image", "INIT"), "strength = 1.5 is not allowed: a number from 0 to 1"),
        (("--init-image", "MISSING"), "--init-image MISSING: cannot read it as an image (No such file or directory)"),
        (("--init-image", "TEXT"), "--init-image TEXT: cannot read it as an image"),
        (("--mask", "INIT"), "--mask needs --init-image"),
        (("--clip-skip", "40"), "clip_skip = 40 is not allowed"),
    ],
)
def test_bad_arguments_fail_with_one_line_naming_the_value(capsys, model: Path, tmp_path: Path, args, expected):
    files = {"INIT": tmp_path / "init.png", "MISSING": tmp_path / "missing.png", "TEXT": tmp_path / "notes.txt"}
    Image.new("RGB", (64, 64)).save(files["INIT"])
    files["TEXT"].write_text("not an image")
    args = tuple(str(files[a]) if a in files else a for a in args)
    expected = next((expected.replace(k, str(v)) for k, v in files.items() if k in expected), expected)
    out = tmp_path / "out"
    code, paths, err = generate(capsys, model, out, "a prompt", "--steps", "1", *args)
    assert code != 0 and paths == []
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mlx-sd generate: error: ") and expected in lines[0], lines[0]
    assert not out.exists()  # nothing ran, nothing was written


def test_demo_names_the_bundled_model(capsys, model: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(model_paths, "DEMO_FOLDER", tmp_path / "not-installed")
    code, paths, err = generate(capsys, Path(DEMO_NAME), tmp_path / "out", "a prompt")
    assert code == 1 and paths == [] and len(err.strip().splitlines()) == 1
    assert "the bundled demo model is not installed: expected " in err
    monkeypatch.setattr(model_paths, "DEMO_FOLDER", model)
    code, paths, err = generate(capsys, Path(DEMO_NAME), tmp_path / "out", "a prompt", "--steps", "1")
    assert code == 0 and len(paths) == 1, err
    assert f"loading {model} " in err


def test_missing_model_folder_and_bad_numbers(capsys, tmp_path: Path):
    code, _, err = generate(capsys, tmp_path / "nowhere", tmp_path / "out", "a prompt")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "nowhere is not an mlx-sd model folder (no model.json)" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", str(tmp_path), "a prompt", "--width", "wide"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --width: invalid int value: 'wide'" in err


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError("[metal::malloc] Attempting to allocate 99999999999 bytes")])
def test_out_of_memory_is_one_line_not_a_traceback(capsys, model: Path, tmp_path: Path, monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr("mlx_sd.pipeline.Pipeline.generate", fail)
    code, files, err = generate(capsys, model, tmp_path / "out", "a prompt", "--steps", "1")
    assert code == 1 and files == [] and len(err.strip().splitlines()) == 2  # "loading ..." and the error
    assert "out of memory" in err and "smaller size or batch" in err and "Traceback" not in err


def test_a_cancel_request_stops_at_the_next_step_and_saves_nothing(capsys, model: Path, tmp_path: Path, monkeypatch):
    """The in-process path of Ctrl-C: the SIGINT handler is installed, and a signal during sampling
    stops the run within a step with exit code 130 and no file."""
    import cli.generate as command

    steps_seen: list[int] = []
    original = command.ProgressBar.__call__

    def progress_then_interrupt(self, progress):
        original(self, progress)
        steps_seen.append(progress.step)
        if progress.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(command.ProgressBar, "__call__", progress_then_interrupt)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN in a background job
    code, paths, err = generate(capsys, model, out, "a prompt", "--steps", "50", "--batch-count", "3")
    assert code == 130 and paths == []
    assert steps_seen == [1, 2]  # the step after the signal never ran
    assert "stopped: 0 of 3 images saved" in err
    assert not out.exists() or list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is before  # the handler was put back


# ---------------------------------------------------------------------------------------------
# As a subprocess: the installed entry point's behaviour, Ctrl-C with a real signal


def _subprocess(model: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cli.main", "generate", "--model", str(model), "--output", str(out), *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_subprocess_run_prints_paths_of_complete_files(model: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = _subprocess(model, out, "a green cone", "--steps", "2", "--seed", "11", "--batch-size", "2")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    paths = [Path(line) for line in stdout.splitlines()]
    assert [p.name for p in paths] == ["00001-11.png", "00002-12.png"]
    for path in paths:
        assert request_from_infotext(read_infotext(path)).prompt == "a green cone"
    assert "Traceback" not in stderr and "step 2/2" in stderr


@pytest.mark.slow
def test_subprocess_ctrl_c_exits_130_without_traceback_or_files(model: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = _subprocess(model, out, "a slow run", "--steps", "1000")  # minutes if it ran to the end
    lines: list[str] = []
    started = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("step "):
                started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert started.wait(timeout=120), "".join(lines)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    proc.wait(timeout=60)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr
    assert time.perf_counter() - sent < 30  # stopped within a step, not after 1000
    assert stdout == "" and "Traceback" not in stderr
    assert "stopped: 0 of 1 images saved" in stderr
    assert not out.exists() or list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Errors before work, warnings, text, seeds and permissions (issue 15 items 6, 8, 9)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the weights load: these runs must stop before."""
    from mlx_sd.pipeline import Pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Pipeline, "load", refuse)


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_that_cannot_be_a_folder_fails_before_the_model_loads(capsys, model, tmp_path, no_model_load, where):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if where == "file" else blocker / "images"
    code, paths, err = generate(capsys, model, out, "a prompt", "--steps", "1")
    lines = err.strip().splitlines()
    assert code != 0 and paths == [] and len(lines) == 1, err
    assert lines[0].startswith("mlx-sd generate: error: the output folder") and "is a file" in lines[0]
    assert blocker.read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_without_write_permission_fails_before_the_model_loads(capsys, model, tmp_path, no_model_load):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = generate(capsys, model, locked / "new", "a prompt")
    assert code != 0 and "is not writable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, warning",
    [
        (("--strength", "0.3"), "--strength has no effect without --init-image"),
        (("--mask-blur", "8"), "--mask-blur has no effect without --mask"),
        (("--negative", "blurry", "--cfg", "1"), "--negative has no effect with --cfg 1"),
    ],
)
def test_options_without_effect_are_warned_about_in_one_line(capsys, model, tmp_path, args, warning):
    code, paths, err = generate(capsys, model, tmp_path / "out", "a prompt", "--steps", "1", "--seed", "3", *args)
    assert code == 0 and len(paths) == 1
    assert f"mlx-sd generate: warning: {warning}" in err.splitlines()[0]


def test_without_such_options_there_is_no_warning(capsys, model, tmp_path):
    code, _, err = generate(capsys, model, tmp_path / "out", "a prompt", "--steps", "1", "--cfg", "1")
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize("field", ["prompt", "negative"])
def test_text_that_is_not_unicode_fails_in_one_line_before_any_work(capsys, model, tmp_path, no_model_load, field):
    bad = os.fsdecode(b"caf\xe9 au lait")  # what Python makes of Latin-1 bytes in a UTF-8 argv
    args = (bad,) if field == "prompt" else ("a prompt", "--negative", bad)
    out = tmp_path / "out"
    code, paths, err = generate(capsys, model, out, *args)
    lines = err.strip().splitlines()
    assert code != 0 and paths == [] and len(lines) == 1, err
    assert "is not allowed: valid Unicode text; character 4 is a lone surrogate" in lines[0]
    assert not out.exists()


def test_a_non_utf8_argv_is_refused_by_the_real_command(model, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "cli", "generate", "--model", str(model), "--output", str(out), b"caf\xe9"]
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, errors="replace", timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("mlx-sd generate: error: prompt = ") and len(done.stderr.splitlines()) == 1
    assert not out.exists()


def test_every_recorded_seed_is_accepted_back_and_remakes_its_image(capsys, model, tmp_path):
    top = 2**32 - 1
    code, paths, err = generate(capsys, model, tmp_path / "run", "a cube", "--steps", "1", "--seed", str(top),
                                "--batch-size", "2", "--cfg", "1")
    assert code == 0, err
    seeds = [request_from_infotext(read_infotext(path)).seed for path in paths]
    assert seeds == [top, top + 1]  # seed + k, not wrapped to 0
    code, again, err = generate(capsys, model, tmp_path / "again", "a cube", "--steps", "1", "--seed", str(top + 1),
                                "--cfg", "1")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(paths[1])))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_images_get_the_permissions_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = save_numbered(Image.new("RGB", (8, 8)), tmp_path, 1, "a prompt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_combined_sampler_name_as_the_readme_promises(capsys, model: Path, tmp_path: Path):
    code, paths, err = generate(capsys, model, tmp_path / "out", "a cube", "--steps", "2", "--sampler", "dpm++ 2m karras")
    assert code == 0, err
    request = request_from_infotext(read_infotext(paths[0]))
    assert (request.sampler, request.schedule) == ("DPM++ 2M", "Karras")
