"""`mlx-sd animate` (mlx_sd.animate, cli/animate.py): the frames' prompts and noise, A1111's variation
slerp, and whole runs on the demo model that give the same frames for the same seed and settings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from mlx_sd.animate import Animation, frame_position, frame_requests, slerp, with_parameters
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import parse_infotext, request_from_infotext
from mlx_sd.request import GenerationRequest, RequestError


def test_frames_move_the_weights_from_the_first_prompt_to_the_second():
    assert [frame_position(i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert frame_position(0, 1) == 0.0
    base = GenerationRequest(seed=7, width=64, height=64, batch_size=2)
    frames = list(frame_requests(base, Animation("a zombie", "a clown", 3), (8, 8, 4)))
    assert [r.prompt for r, _ in frames] == [
        "a zombie :1 AND a clown :0", "a zombie :0.5 AND a clown :0.5", "a zombie :0 AND a clown :1",
    ]
    assert all(r.latents is None and r.seed == 7 and r.batch_size == 1 and extra == {} for r, extra in frames)
    embedded = list(frame_requests(base, Animation("a", "b", 2, seed_to=9, blend="embedding"), (8, 8, 4)))
    assert [r.and_blend for r, _ in embedded] == ["embedding", "embedding"]
    assert embedded[1][1] == {"Variation seed": 9, "Variation seed strength": "1"}
    assert embedded[0][0].latents.shape == (1, 4, 8, 8)


@pytest.mark.parametrize(
    "animation",
    [Animation("a", "b", 0), Animation("a AND b", "c"), Animation("a", "c:2"), Animation("a", "b", blend="mix"),
     Animation("a", "b", seed_to=2**64), Animation("a", "b", seed_to=-1)],
)
def test_bad_animations_are_refused(animation):
    with pytest.raises(RequestError):
        animation.validate()


def test_slerp_goes_from_one_noise_to_the_other_keeping_its_scale():
    rng = np.random.default_rng(0)
    low, high = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    assert np.allclose(slerp(0.0, low, high), low, atol=1e-5) and np.allclose(slerp(1.0, low, high), high, atol=1e-5)
    middle = slerp(0.5, low, high)
    assert abs(middle.std() - 1.0) < 0.1  # a straight line's midpoint would have std 0.71
    assert np.allclose(slerp(0.3, low, low), low, atol=1e-6)  # parallel: the straight line


def test_parameters_are_appended_to_the_last_line():
    assert with_parameters("a cat\nSteps: 3", {"Variation seed": 9}) == "a cat\nSteps: 3, Variation seed: 9"
    assert with_parameters("a cat\nSteps: 3", {}) == "a cat\nSteps: 3"


def animate(capsys, out: Path, *args: str) -> tuple[int, list[Path], str]:
    code = main([
        "animate", "--model", "demo", "--from", "a red circle", "--to", "a blue square", "--frames", "3",
        "--seed", "7", "--steps", "2", "--width", "64", "--height", "64", "--output", str(out), *args,
    ])
    captured = capsys.readouterr()
    return code, [Path(line) for line in captured.out.splitlines()], captured.err


@pytest.mark.parametrize("args", [(), ("--seed-to", "9", "--blend", "embedding", "--format", "gif")])
def test_the_same_seed_and_settings_give_the_same_frames(capsys, tmp_path, args):
    code, paths, err = animate(capsys, tmp_path / "one", *args)
    assert code == 0, err
    frames, animation = paths[:3], paths[3]
    assert [p.suffix for p in paths[:4]] == [".png"] * 3 + [f".{'gif' if args else 'webp'}"]
    with Image.open(animation) as image:
        assert image.n_frames == 3
    texts = [read_infotext(p) for p in frames]
    assert [parse_infotext(t).prompt for t in texts][1] == "a red circle :0.5 AND a blue square :0.5"
    if args:
        assert parse_infotext(texts[1]).params["Variation seed strength"] == "0.5"
        assert parse_infotext(texts[1]).params["Prompt blend"] == "embedding"
    # read back, each frame is the request that made it (the blend included)
    restored = [request_from_infotext(t, GenerationRequest(and_blend="embedding" if not args else "weights")) for t in texts]
    assert [r.and_blend for r in restored] == ["embedding" if args else "weights"] * 3
    assert [(r.seed, r.steps, r.width) for r in restored] == [(7, 2, 64)] * 3
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        assert "no MP4: install imageio-ffmpeg for one" in err
    else:
        assert paths[4].suffix == ".mp4" and paths[4].stat().st_size > 0
    code, again, err = animate(capsys, tmp_path / "two", *args)
    assert code == 0, err
    pixels = [np.asarray(Image.open(p)) for p in frames]
    assert all(np.array_equal(a, np.asarray(Image.open(b))) for a, b in zip(pixels, again[:3]))
    assert not np.array_equal(pixels[0], pixels[2])


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--frames", "0"), "frames = 0"), (("--to", "a AND b"), "without AND"), (("--fps", "0"), "fps = 0")],
)
def test_bad_arguments_fail_in_one_line_before_any_frame(capsys, tmp_path, args, message):
    code, paths, err = animate(capsys, tmp_path / "out", *args)
    assert code == 1 and paths == [] and message in err and len(err.strip().splitlines()) == 1


class FakeFfmpeg:
    """Records what mlx_sd.animation_files.save_mp4 sends to imageio_ffmpeg.write_frames."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.sent, self.fail_after = [], [], fail_after

    def write_frames(self, path, size, **options):
        self.calls.append((path, size, options))
        Path(path).write_bytes(b"partial")
        while True:
            frame = yield
            if frame is not None:
                if self.fail_after is not None and len(self.sent) == self.fail_after:
                    raise OSError("ffmpeg stopped")
                self.sent.append(frame)


def test_mp4_frames_go_to_imageio_ffmpeg_and_a_failed_save_leaves_nothing(monkeypatch, tmp_path):
    from mlx_sd.animation_files import save_mp4

    frames = [Image.new("RGB", (64, 48), (i * 80, 0, 0)) for i in range(3)]
    fake = FakeFfmpeg()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", fake)
    save_mp4(frames, tmp_path / "a.mp4", 8.0)
    assert fake.calls == [(str(tmp_path / "a.mp4"), (64, 48), {"fps": 8.0, "macro_block_size": 8})]
    assert fake.sent == [f.tobytes() for f in frames]
    broken = FakeFfmpeg(fail_after=1)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", broken)
    with pytest.raises(OSError):
        save_mp4(frames, tmp_path / "b.mp4", 8.0)
    assert not (tmp_path / "b.mp4").exists()


def test_an_mp4_is_written_and_reads_back_with_its_frames_and_size(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")  # in the dev extra: present in CI
    from mlx_sd.animation_files import save_mp4

    frames = [Image.new("RGB", (64, 48), (i * 60, 255 - i * 60, 0)) for i in range(5)]
    path = tmp_path / "a.mp4"
    save_mp4(frames, path, 8.0)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    read = [np.frombuffer(frame, np.uint8).reshape(48, 64, 3) for frame in reader]
    assert meta["size"] == (64, 48) and meta["fps"] == 8.0 and len(read) == 5
    for original, decoded in zip(frames, read):  # lossy, but each frame is its own colour
        assert np.abs(decoded.astype(int) - np.asarray(original).astype(int)).mean() < 12


def test_without_imageio_ffmpeg_the_cli_says_how_to_get_an_mp4(capsys, tmp_path, monkeypatch):
    import mlx_sd.animation_files

    monkeypatch.setattr(mlx_sd.animation_files, "mp4_available", lambda: False)
    code, paths, err = animate(capsys, tmp_path / "out", "--frames", "2", "--steps", "1")
    assert code == 0 and [p.suffix for p in paths] == [".png", ".png", ".webp"]
    assert "no MP4: install imageio-ffmpeg for one (pip install 'mlx-sd[video]')" in err.splitlines()
