"""An animation's frames as one file: a looping WebP or GIF (Pillow), and an MP4 (H.264) through the
ffmpeg binary that the optional package imageio-ffmpeg bundles (`pip install 'mlx-sd[video]'`).
A save that fails or is interrupted leaves no file behind."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from .output_files import reserve_path

ANIMATION_FORMATS = ("webp", "gif")
MP4_MISSING = "no MP4: install imageio-ffmpeg for one (pip install 'mlx-sd[video]')"


def mp4_available() -> bool:
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def save_animation(frames: list[Image.Image], path: Path, fps: float) -> None:
    """An endlessly looping animation in the format of `path`'s suffix (lossless for WebP)."""
    try:
        frames[0].save(
            path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0,
            **({"lossless": True} if path.suffix == ".webp" else {}),
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def save_mp4(frames: list[Image.Image], path: Path, fps: float) -> None:
    """An MP4 of the frames; imageio-ffmpeg must be installed (`mp4_available`)."""
    import imageio_ffmpeg  # optional: see mp4_available

    try:
        # sizes are multiples of 8 already, so ffmpeg's macro blocks never make it resize a frame
        writer = imageio_ffmpeg.write_frames(str(path), frames[0].size, fps=fps, macro_block_size=8)
        try:
            writer.send(None)  # starts ffmpeg
            for frame in frames:
                writer.send(frame.convert("RGB").tobytes())
        finally:
            writer.close()  # waits for ffmpeg to finish the file, or stops it after a failure
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def save_animations(frames: list[Image.Image], folder: Path, seed: int, fps: float, format: str) -> list[Path]:
    """The animation in `format` (one of ANIMATION_FORMATS) and, when imageio-ffmpeg is installed, an
    MP4, each under the folder's next free number (as the frames are); returns their paths."""
    path = reserve_path(folder, seed, f".{format}")
    save_animation(frames, path, fps)
    paths = [path]
    if mp4_available():
        paths.append(reserve_path(folder, seed, ".mp4"))
        save_mp4(frames, paths[-1], fps)
    return paths
