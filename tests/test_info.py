"""`mlx-sd info`: the system report, a model folder's report and the presets' parameter counts."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path


import mlx.core as mx
import pytest
from model_folders import CONFIGS, write_random_model

from cli.main import main
from mlx_sd.cpu import kernels as cpu_kernels
from mlx_sd.config import SourceInfo

REPO = Path(__file__).resolve().parent.parent

# docs/facts.md §1.6 (computed from the published configs)
UNET_SD1, UNET_SD1_INPAINT, UNET_SD2 = 859_520_964, 859_535_364, 865_910_724
UNET_SDXL, UNET_REFINER = 2_567_463_684, 2_259_526_660
VAE, CLIP_L, OPENCLIP_H_23, BIGG = 83_653_863, 123_060_480, 340_387_840, 694_659_840
EXPECTED = {
    "sd15": {"unet": UNET_SD1, "vae": VAE, "text_encoder": CLIP_L},
    "sd15-inpaint": {"unet": UNET_SD1_INPAINT, "vae": VAE, "text_encoder": CLIP_L},
    "sd21-base": {"unet": UNET_SD2, "vae": VAE, "text_encoder": OPENCLIP_H_23},
    "sd21": {"unet": UNET_SD2, "vae": VAE, "text_encoder": OPENCLIP_H_23},
    "sdxl": {"unet": UNET_SDXL, "vae": VAE, "text_encoder": CLIP_L, "text_encoder_2": BIGG},
    "sdxl-refiner": {"unet": UNET_REFINER, "vae": VAE, "text_encoder_2": BIGG},
}


def printed_counts(output: str) -> dict[str, int]:
    return {name: int(count.replace(",", "")) for name, count in re.findall(r"^\s+(\w+)\s+([\d,]+)", output, re.M)}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_counts(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = mx.get_active_memory()
    assert main(["info", "--preset", name]) == 0
    counts = printed_counts(capsys.readouterr().out)
    expected = dict(EXPECTED[name], total=sum(EXPECTED[name].values()))
    assert counts == expected
    assert mx.get_active_memory() - before < 1 << 20  # counted, never allocated


def test_system_report_in_a_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "info"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print("\n" + out)
    assert f"mlx {mx.__version__}" in out
    assert re.search(r"^device: (cpu|gpu) \(default .*; GPU available: (yes|no)\)$", out, re.M)
    assert re.search(r"^compute dtype: float32 for float16 weights", out, re.M) or "device: gpu" in out
    assert re.search(r"^BLAS: .*\(.+\)$", out, re.M)
    assert re.search(r"^CPU kernels: (fused attention, GroupNorm and GEMM compiled in .+\.so|not used on the GPU)$", out, re.M)
    assert re.search(r"attention: (kernel|fused)$", out, re.M)
    bf16 = re.search(r"^bfloat16 products \(--precision bfloat16\): (.+)$", out, re.M).group(1)
    assert bf16.startswith("available" if cpu_kernels.bf16_products() else ("unavailable", "not needed"))
    gflops = float(re.search(r"^float32 1024x1024 matmul: ([\d.]+) GFLOPS$", out, re.M).group(1))
    assert gflops > 0
    assert re.search(r"^Python 3\.\d+\.\d+ on ", out, re.M)


def test_model_folder_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(
        CONFIGS["sdxl"], source=SourceInfo(name="tiny.safetensors", sha256="0123456789abcdef" * 4)
    )
    folder = tmp_path / "tiny"
    written = write_random_model(folder, config)
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "family: sdxl, prediction: epsilon, default size: 64x64" in out
    assert "storage dtype: float16" in out
    assert f"source: tiny.safetensors, sha256 {'0123456789abcdef' * 4} (Model hash 0123456789)" in out
    counts = printed_counts(out.split(f"model: {folder}")[1])
    expected = {name: sum(a.size for a in weights.values()) for name, weights in written.items()}
    assert counts == dict(expected, total=sum(expected.values()))
    for name in written:
        size = (folder / f"{name}.safetensors").stat().st_size / 1e6
        assert re.search(rf"^\s+{name}\s+[\d,]+\s+{size:.1f} MB$", out, re.M), name


def test_not_a_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path)]) == 1
    assert "mlx-sd info: error:" in capsys.readouterr().err


def test_folder_and_preset_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["info", str(tmp_path), "--preset", "sd15"])


def test_demo_names_the_bundled_model(capsys: pytest.CaptureFixture[str]) -> None:
    # 'demo' means the bundled model here as in generate, animate and serve
    from mlx_sd.model_paths import DEMO_FOLDER, demo_available

    if not demo_available():
        pytest.skip("the demo model is not installed")
    assert main(["info", "demo"]) == 0
    assert f"model: {DEMO_FOLDER}" in capsys.readouterr().out
