"""AutoencoderKL: parity with diffusers, key names, shapes and dtypes, lazy full-size build."""

import dataclasses


import mlx.core as mx
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from mlx.utils import tree_flatten, tree_unflatten

from mlx_sd.config import VAE_SD, VAEConfig
from reference import models as reference_models
from mlx_sd.vae import AutoencoderKL

TINY = VAEConfig(block_out_channels=(32, 32, 64, 64))


def torch_vae(config: VAEConfig, seed: int = 0) -> TorchAutoencoderKL:
    torch.manual_seed(seed)
    model = reference_models.vae(config).eval()
    # Perturb the GroupNorm affines (initialised to 1 and 0) so that the test exercises them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def to_mlx(model: TorchAutoencoderKL) -> dict[str, mx.array]:
    """diffusers state dict -> MLX layout (4-D conv weights channels-last)."""
    out = {}
    for key, value in model.state_dict().items():
        array = value.detach().float().numpy()
        if array.ndim == 4:
            array = array.transpose(0, 2, 3, 1)
        out[key] = mx.array(array)
    return out


def mlx_vae(config: VAEConfig, reference: TorchAutoencoderKL) -> AutoencoderKL:
    model = AutoencoderKL(config)
    weights = to_mlx(reference)
    ours = dict(tree_flatten(model.parameters()))
    assert sorted(ours) == sorted(weights), set(ours) ^ set(weights)
    for key, value in weights.items():
        assert tuple(ours[key].shape) == tuple(value.shape), key
    model.update(tree_unflatten(list(weights.items())))
    return model


def nchw(x: mx.array) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("height,width", [(64, 64), (72, 88)])
def test_parity_with_diffusers(height: int, width: int) -> None:
    reference = torch_vae(TINY)
    model = mlx_vae(TINY, reference)
    images = mx.random.uniform(-1, 1, (2, height, width, 3), key=mx.random.key(1))
    latents = mx.random.normal((2, height // 8, width // 8, 4), key=mx.random.key(2))

    moments = model.encode(images)
    decoded = model.decode(latents)
    with torch.no_grad():
        ref_moments = nhwc(reference.quant_conv(reference.encoder(nchw(images))))
        ref_decoded = nhwc(reference.decode(nchw(latents)).sample)

    assert moments.shape == (2, height // 8, width // 8, 8)
    assert decoded.shape == (2, height, width, 3)
    enc_err = np.abs(np.array(moments) - ref_moments).max()
    dec_err = np.abs(np.array(decoded) - ref_decoded).max()
    print(
        f"\nVAE {height}x{width}: encoder moments max abs err {enc_err:.2e} (scale {np.abs(ref_moments).max():.2f}),"
        f" decoder {dec_err:.2e} (scale {np.abs(ref_decoded).max():.2f})"
    )
    assert enc_err < 1e-4
    assert dec_err < 1e-4


def test_without_quant_convs_and_mid_attention() -> None:
    config = dataclasses.replace(TINY, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)
    reference = torch_vae(config)
    model = mlx_vae(config, reference)
    assert "quant_conv" not in model and "post_quant_conv" not in model
    latents = mx.random.normal((1, 4, 5, 4), key=mx.random.key(3))
    with torch.no_grad():
        expected = nhwc(reference.decode(nchw(latents)).sample)
    assert np.abs(np.array(model.decode(latents)) - expected).max() < 1e-4


def test_diffusers_key_names() -> None:
    keys = {k for k, _ in tree_flatten(AutoencoderKL(TINY).parameters())}
    for key in (
        "encoder.down_blocks.0.resnets.0.conv1.weight",
        "encoder.down_blocks.2.resnets.0.conv_shortcut.weight",
        "encoder.down_blocks.2.downsamplers.0.conv.weight",
        "encoder.mid_block.attentions.0.to_q.weight",
        "encoder.mid_block.attentions.0.to_out.0.bias",
        "encoder.mid_block.attentions.0.group_norm.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.up_blocks.3.resnets.2.conv2.weight",
        "decoder.conv_norm_out.bias",
        "quant_conv.weight",
        "post_quant_conv.weight",
    ):
        assert key in keys, key
    assert "encoder.down_blocks.3.downsamplers.0.conv.weight" not in keys
    assert "decoder.up_blocks.3.upsamplers.0.conv.weight" not in keys
    params = dict(tree_flatten(AutoencoderKL(TINY).parameters()))
    assert params["quant_conv.weight"].shape == (8, 1, 1, 8)  # 1x1 conv kept as a conv, MLX layout
    assert params["encoder.conv_in.weight"].shape == (32, 3, 3, 3)


def test_float16_shapes_and_dtypes() -> None:
    model = AutoencoderKL(TINY)
    model.set_dtype(mx.float16)
    images = mx.random.uniform(-1, 1, (1, 72, 88, 3))
    moments = model.encode(images)
    decoded = model.decode(mx.random.normal((1, 9, 11, 4)).astype(mx.float16))
    assert moments.shape == (1, 9, 11, 8) and moments.dtype == mx.float16
    assert decoded.shape == (1, 72, 88, 3) and decoded.dtype == mx.float16
    assert bool(mx.isfinite(decoded).all()) and bool(mx.isfinite(moments).all())


def test_rejects_bad_input_shapes() -> None:
    model = AutoencoderKL(TINY)
    with pytest.raises(ValueError, match=r"multiples of 8; received shape \(1, 60, 64, 3\)"):
        model.encode(mx.zeros((1, 60, 64, 3)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 4\).*received shape \(1, 4, 8, 8\)"):
        model.decode(mx.zeros((1, 4, 8, 8)))


def test_full_size_parameter_count_without_allocating() -> None:
    before = mx.get_active_memory()
    model = AutoencoderKL(VAE_SD)
    params = tree_flatten(model.parameters())
    count = sum(p.size for _, p in params)
    encoder = sum(p.size for k, p in params if k.startswith("encoder."))
    decoder = sum(p.size for k, p in params if k.startswith("decoder."))
    assert count == 83_653_863
    assert (encoder, decoder) == (34_163_592, 49_490_179)
    assert mx.get_active_memory() - before < 1 << 20  # 83.6M float32 would be 334 MB
