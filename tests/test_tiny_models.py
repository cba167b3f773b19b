"""The tiny models and their single-file checkpoints, checked independently of our converter: each single file
is loaded with diffusers' own single-file loader (given a config folder without weights, so nothing can fall
back to the diffusers weights) and must reproduce every weight of the original pipeline exactly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import safetensors.torch  # noqa: E402
from diffusers.loaders.single_file_utils import infer_diffusers_model_type  # noqa: E402

import tiny_models as tm  # noqa: E402

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
# diffusers' own name for each kind's single file (its CHECKPOINT_KEY_NAMES detection). It tells SD2 from
# SD1 by the 1024-wide context alone, so it calls the tiny SD2 "v1"; the OpenCLIP keys say SD2
# (docs/facts.md §2.3).
DIFFUSERS_MODEL_TYPE = {
    "sd1": "v1", "sd1-inpaint": "inpainting", "sd2-v": "v1", "sdxl": "xl_base", "sdxl-refiner": "xl_refiner",
}
SCHEDULERS = {
    "sd1": "PNDMScheduler", "sd1-inpaint": "PNDMScheduler", "sd2-v": "DDIMScheduler",
    "sdxl": "EulerDiscreteScheduler", "sdxl-refiner": "EulerDiscreteScheduler",
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with tm.single_threaded_torch():
        yield


@pytest.fixture(scope="module")
def pipelines():
    return {kind: tm.build_pipeline(kind) for kind in tm.KINDS}


def assert_same_weights(expected, loaded, what: str) -> None:
    for name in COMPONENTS:
        a, b = getattr(expected, name, None), getattr(loaded, name, None)
        if a is None:
            assert b is None, f"{what}: unexpected {name}"
            continue
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb), f"{what}: {name} keys differ: {sorted(set(sa) ^ set(sb))[:5]}"
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, f"{what}: {name} weights differ at {different[:5]} (of {len(different)})"


@pytest.mark.parametrize("kind", tm.KINDS)
def test_single_file_loads_in_diffusers_with_identical_weights(kind, tiny_models, pipelines):
    path = tiny_models.single_file(kind)
    cls = tm.spec(kind).pipeline
    loaded = cls.from_single_file(str(path), config=str(tiny_models.configs_only(kind)), local_files_only=True)
    assert type(loaded) is cls
    assert type(loaded.scheduler).__name__ == SCHEDULERS[kind]
    assert_same_weights(pipelines[kind], loaded, f"{kind} single file")


@pytest.mark.parametrize("kind", tm.KINDS)
def test_diffusers_folder_round_trips(kind, tiny_models, pipelines):
    folder = tiny_models.diffusers(kind)
    loaded = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert type(loaded) is tm.spec(kind).pipeline
    assert_same_weights(pipelines[kind], loaded, f"{kind} diffusers folder")
    # laid out as hub repos: BPE files beside tokenizer.json, `text_model.` prefixed text-encoder keys
    for tok in ("tokenizer", "tokenizer_2"):
        if (folder / tok).is_dir():
            assert {"vocab.json", "merges.txt"} <= {p.name for p in (folder / tok).iterdir()}
    for te in ("text_encoder", "text_encoder_2"):
        if (folder / te).is_dir():
            keys = safetensors.torch.load_file(str(folder / te / "model.safetensors")).keys()
            assert all(k.startswith(("text_model.", "text_projection.")) for k in keys)


@pytest.mark.parametrize("kind", tm.KINDS)
def test_single_file_layout_is_the_original_one(kind, tiny_models):
    state = safetensors.torch.load_file(str(tiny_models.single_file(kind)))
    assert infer_diffusers_model_type(state) == DIFFUSERS_MODEL_TYPE[kind]
    family = tm.spec(kind).family
    # UNet block numbering (docs/facts.md §2.5); diffusers' loader accepts either upsampler slot, so check it here
    up_types = tm.spec(kind).unet["up_block_types"]
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in state
    for level, up_type in enumerate(up_types[:-1]):
        slot = 2 if up_type.startswith("CrossAttn") else 1
        assert f"model.diffusion_model.output_blocks.{3 * level + 2}.{slot}.conv.weight" in state, (level, slot)
    vae_attn = [k for k in state if ".mid.attn_1." in k and k.endswith("weight") and ".norm." not in k]
    assert len(vae_attn) == 8 and all(state[k].ndim == 4 and state[k].shape[2:] == (1, 1) for k in vae_attn)
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in state
    assert state["first_stage_model.decoder.up.0.block.0.conv1.weight"].shape[0] == 32  # level 0 = full size
    if family in ("sd1", "sd2"):
        assert "alphas_cumprod" in state and state["alphas_cumprod"].shape == (1000,)
        assert abs(float(state["alphas_cumprod"][-1]) - 0.0046601) < 1e-6  # docs/facts.md §1.7
    if family == "sd1":
        assert state["cond_stage_model.transformer.text_model.embeddings.position_ids"].shape == (1, 77)
        assert state["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4  # conv projection
    if family == "sd2":
        prefix = "cond_stage_model.model."
        width, layers = tm.spec(kind).text_encoder.width, tm.spec(kind).text_encoder.layers
        assert state[prefix + f"transformer.resblocks.{layers}.attn.in_proj_weight"].shape == (3 * width, width)
        assert prefix + f"transformer.resblocks.{layers + 1}.ln_1.weight" not in state
        assert state[prefix + "text_projection"].shape == (width, width)
        assert state["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # linear projection
    if family == "sdxl":
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in state
        assert state["conditioner.embedders.1.model.text_projection"].shape == (192, 192)
        assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (256, 192 + 6 * 256)
    if family == "sdxl-refiner":
        assert not any(k.startswith("conditioner.embedders.1.") for k in state)
        assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (256, 192 + 5 * 256)


def test_openclip_projection_is_stored_transposed(tiny_models, pipelines):
    state = safetensors.torch.load_file(str(tiny_models.single_file("sdxl")))
    hf = pipelines["sdxl"].text_encoder_2.text_projection.weight
    assert torch.equal(state["conditioner.embedders.1.model.text_projection"], hf.T)
    # the 192x192 projection is square: a missing transpose would still load, so check it is not symmetric
    assert not torch.equal(hf, hf.T)


def test_ema_variant_holds_the_pipeline_weights_under_model_ema(tiny_models, pipelines):
    path = tiny_models.single_file("sd1", ema=True)
    config = str(tiny_models.configs_only("sd1"))
    cls = tm.spec("sd1").pipeline
    ema = cls.from_single_file(str(path), config=config, local_files_only=True, extract_ema=True)
    assert_same_weights(pipelines["sd1"], ema, "sd1 EMA weights")
    plain = cls.from_single_file(str(path), config=config, local_files_only=True)
    key = "conv_in.weight"
    assert not torch.equal(plain.unet.state_dict()[key], pipelines["sd1"].unet.state_dict()[key])


def test_float16_single_file(tmp_path, tiny_models, pipelines):
    path = tm.save_single_file("sd1", tmp_path / "sd1-fp16.safetensors", pipelines["sd1"], dtype=torch.float16)
    stored = safetensors.torch.load_file(str(path))
    assert stored["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float16
    assert stored["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    loaded = tm.spec("sd1").pipeline.from_single_file(
        str(path), config=str(tiny_models.configs_only("sd1")), local_files_only=True, torch_dtype=torch.float32
    )
    expected = pipelines["sd1"].unet.state_dict()
    for key, value in loaded.unet.state_dict().items():
        assert torch.equal(value, expected[key].half().float()), key


def test_builds_are_deterministic(pipelines):
    again = tm.build_pipeline("sd2-v")
    assert_same_weights(pipelines["sd2-v"], again, "rebuild")


# ---------------------------------------------------------------------------------------------
# The family rules that shapes cannot reveal (the shared tiny-model rule)


@pytest.mark.parametrize("kind", tm.KINDS)
def test_family_rules_are_kept(kind, pipelines):
    pipe, s = pipelines[kind], tm.spec(kind)
    heads = [(m.heads, m.inner_dim) for n, m in pipe.unet.named_modules() if n.endswith(("attn1", "attn2"))]
    assert heads
    if s.family == "sd1":
        assert all(h == 8 for h, _ in heads)
    else:
        assert all(inner // h == 64 for h, inner in heads)
    groups = {m.num_groups for m in list(pipe.unet.modules()) + list(pipe.vae.modules())
              if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {32}
    assert pipe.unet.config.layers_per_block == 2 and pipe.vae.config.layers_per_block == 2
    assert len(pipe.vae.config.block_out_channels) == 4
    if s.family in ("sdxl", "sdxl-refiner"):
        assert pipe.unet.config.addition_time_embed_dim == 256
    for name, pad in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        te = getattr(pipe, name, None)
        if te is None:
            continue
        c = te.config
        assert (c.vocab_size, c.max_position_embeddings) == (49408, 77)
        assert c.num_attention_heads == c.hidden_size // 64
        # OpenAI CLIP-L: SD1 and SDXL's first encoder; OpenCLIP: SD2 and bigG
        openclip = not (name == "text_encoder" and s.family in ("sd1", "sdxl"))
        assert c.hidden_act == ("gelu" if openclip else "quick_gelu")
        tokenizer = getattr(pipe, pad)
        assert tokenizer.pad_token_id == (0 if openclip else 49407) and tokenizer.model_max_length == 77
        ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
        assert ids[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0 if openclip else 49407]


# ---------------------------------------------------------------------------------------------
# Unit-scale activations: every layer's output neither tiny nor huge


def _layer_stds(model, run) -> tuple[list[float], object]:
    stds: list[float] = []
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)

    def hook(_module, _inputs, output):
        stds.append(float(output.float().std()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = run()
    finally:
        for handle in handles:
            handle.remove()
    return stds, out


@pytest.mark.parametrize("kind", tm.KINDS)
def test_activations_are_unit_scale(kind, pipelines):
    pipe, s = pipelines[kind], tm.spec(kind)
    g = torch.Generator().manual_seed(0)
    added = None
    if s.family in ("sdxl", "sdxl-refiner"):
        time_ids = [128.0, 128, 0, 0, 128, 128] if s.family == "sdxl" else [128.0, 128, 0, 0, 6.0]
        added = {"text_embeds": torch.randn(1, 192, generator=g), "time_ids": torch.tensor([time_ids])}
    sample = torch.randn(1, s.unet["in_channels"], 16, 16, generator=g)
    context = torch.randn(1, 77, s.unet["cross_attention_dim"], generator=g)
    latents, images = torch.randn(1, 4, 16, 16, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    runs = {
        "unet": (pipe.unet, lambda: pipe.unet(sample, torch.tensor([500.0]), context, added_cond_kwargs=added).sample),
        "vae decode": (pipe.vae, lambda: pipe.vae.decode(latents).sample),
        "vae encode": (pipe.vae, lambda: pipe.vae.encode(images).latent_dist.parameters),  # mean and log-variance
    }
    for name, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        te = getattr(pipe, name, None)
        if te is not None:
            ids = getattr(pipe, tok)("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt")
            ids = ids.input_ids
            runs[name] = (te, lambda te=te, ids=ids: te(ids, output_hidden_states=True).hidden_states[-2])
    for name, (model, run) in runs.items():
        stds, out = _layer_stds(model, run)
        assert 0.3 < float(out.std()) < 3.0, f"{kind} {name}: output std {float(out.std()):.3f}"
        assert 0.1 < min(stds) and max(stds) < 10.0, f"{kind} {name}: layer stds {min(stds):.3f}..{max(stds):.3f}"
    # biases and norm affines are random too, so bugs in them change outputs
    for name in COMPONENTS:
        model = getattr(pipe, name, None)
        if model is not None:
            flat = [n for n, p in model.named_parameters() if p.numel() > 1 and bool((p == p.flatten()[0]).all())]
            assert not flat, f"{kind} {name}: constant parameters {flat[:3]}"
