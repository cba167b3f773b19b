"""CLIP / OpenCLIP text encoders with transformers' CLIPTextModel parameter names (docs/facts.md §1.4).

A causal pre-LayerNorm transformer over 77 token ids: token + learned position embeddings, N blocks
(LN -> self-attention -> residual, LN -> MLP -> residual), a final LayerNorm. SDXL's bigG adds
`text_projection` for the pooled embedding.

Which hidden state a family feeds the UNet, and what `clip_skip` does (A1111's meaning: 1 = the
family's normal layer, k = that layer moved k-1 layers earlier):

- SD1 (CLIP-L, `CLIP_L`): last layer + final LayerNorm. clip_skip 2 = penultimate layer + final
  LayerNorm, exactly A1111's "Clip skip: 2" and diffusers' `clip_skip=1`.
- SD2 (OpenCLIP ViT-H, `OPENCLIP_H`): the converted tower keeps 23 of 24 layers, so its last layer is
  OpenCLIP's penultimate; + final LayerNorm. clip_skip k moves k-1 layers earlier (diffusers'
  `clip_skip=k-1`); A1111 itself ignores Clip skip for SD2.
- SDXL (CLIP-L `CLIP_L_SDXL` and bigG `OPENCLIP_BIGG`): penultimate layer, no final LayerNorm.
  clip_skip k = hidden_states[-(k+1)] for both encoders, as diffusers' SDXL `clip_skip=k-1`.
  A1111 by default ignores Clip skip for SDXL (its "Clip skip SDXL" option applies it to CLIP-L
  only, counting from the last layer).
- The pooled embedding (bigG; SDXL base and refiner) always comes from the final layer:
  final LayerNorm at the first EOS position, times `text_projection`, whatever clip_skip is.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .config import CLIPTextConfig
from .layers import DotProductAttention, causal_mask


def quick_gelu(x: mx.array) -> mx.array:
    """OpenAI CLIP's GELU approximation."""
    return x * mx.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,  # OpenAI CLIP
    "gelu": nn.gelu,  # OpenCLIP (erf form)
}


@dataclass
class CLIPOutput:
    hidden_states: list[mx.array]  # embeddings output, then each layer's output: num_hidden_layers + 1
    last_hidden_state: mx.array  # final LayerNorm of the last layer's output
    pooled_output: mx.array  # last_hidden_state at the first EOS of each row
    text_embeds: mx.array | None  # pooled_output @ text_projection, when the tower has one


@dataclass
class TextEmbedding:
    hidden: mx.array  # (B, 77, hidden_size): the cross-attention context
    pooled: mx.array | None  # (B, projection_dim) for towers with a projection, else None


class CLIPAttention(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.attention = DotProductAttention(config.num_attention_heads)
        self.out_proj = nn.Linear(width, width)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.out_proj(self.attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), mask))


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        # self-attention
        x = x + self.self_attn(self.layer_norm1(x), mask)
        # feed-forward
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def __call__(self, input_ids: mx.array, dtype: mx.Dtype | None = None, tokens: mx.array | None = None) -> mx.array:
        """Token + position embeddings, summed in `dtype` (None: the weights' dtype); `tokens`, when
        given, replaces the token vectors (textual inversion puts its vectors among them)."""
        tokens = self.token_embedding(input_ids) if tokens is None else tokens
        positions = self.position_embedding(mx.arange(input_ids.shape[1]))
        if dtype is not None:
            tokens, positions = tokens.astype(dtype), positions.astype(dtype)
        return tokens + positions


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = [CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)]


class CLIPTextTransformer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """One text tower; `config.projection_dim` adds `text_projection` (transformers'
    CLIPTextModelWithProjection). Parameters are built lazily: nothing is computed until loaded.

    `compute_dtype` (None: the weights' own; the pipeline sets it when it loads the weights) is the
    dtype the tower computes in: the embeddings are cast to it before they are summed and each later
    op promotes its weights, so float16 weights can run in float32 with no float32 copy kept (the
    pipeline's choice where float16 products are slow).
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.compute_dtype: mx.Dtype | None = None
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {', '.join(ACTIVATIONS)}, got {config.hidden_act!r}")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not divisible by {config.num_attention_heads} attention heads"
            )
        self.config = config
        self.text_model = CLIPTextTransformer(config)
        if config.projection_dim is not None:
            self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def __call__(self, input_ids: mx.array) -> CLIPOutput:
        """Every hidden state, the final-normed last state, and the pooled (and projected) output."""
        hidden_states = self._hidden_states(input_ids, self.config.num_hidden_layers)
        last = self.text_model.final_layer_norm(hidden_states[-1])
        pooled = self._pool(last, input_ids)
        projected = self.text_projection(pooled) if self.config.projection_dim is not None else None
        return CLIPOutput(hidden_states, last, pooled, projected)

    def encode(self, input_ids: mx.array, clip_skip: int = 1, tokens: mx.array | None = None) -> TextEmbedding:
        """The family's cross-attention context and pooled embedding (see the module docstring).

        hidden = hidden_states[config.hidden_layer - (clip_skip - 1)], then the final LayerNorm if
        config.final_norm; pooled = the projected output, or None without a projection.
        """
        layers = self.config.num_hidden_layers
        index = self.config.hidden_layer - (clip_skip - 1)
        if clip_skip < 1 or not -(layers + 1) <= index < 0:
            deepest = layers + 1 + self.config.hidden_layer + 1
            raise ValueError(f"clip_skip must be from 1 to {deepest} for this {layers}-layer encoder, got {clip_skip}")
        selected = layers + 1 + index  # position in hidden_states; layers past it are only run for pooling
        needed = layers if self.config.projection_dim is not None else selected
        hidden_states = self._hidden_states(input_ids, needed, tokens)
        hidden = hidden_states[selected]
        if self.config.final_norm:
            hidden = self.text_model.final_layer_norm(hidden)
        pooled = None
        if self.config.projection_dim is not None:
            last = self.text_model.final_layer_norm(hidden_states[-1])
            pooled = self.text_projection(self._pool(last, input_ids))
        return TextEmbedding(hidden, pooled)

    def _hidden_states(self, input_ids: mx.array, num_layers: int, tokens: mx.array | None = None) -> list[mx.array]:
        self._check_ids(input_ids)
        x = self.text_model.embeddings(input_ids, self.compute_dtype, tokens)
        mask = causal_mask(x.shape[1], x.dtype)
        states = [x]
        for layer in self.text_model.encoder.layers[:num_layers]:
            x = layer(x, mask)
            states.append(x)
        return states

    def _pool(self, last: mx.array, input_ids: mx.array) -> mx.array:
        # The first EOS of each row; with CLIP's vocabulary EOS is the largest id, so this is
        # also the argmax of the ids that OpenCLIP and SGM use.
        eos_positions = mx.argmax((input_ids == self.config.eos_token_id).astype(mx.int32), axis=-1)
        return last[mx.arange(last.shape[0]), eos_positions]

    def _check_ids(self, input_ids: mx.array) -> None:
        limit = self.config.max_position_embeddings
        if input_ids.ndim != 2 or not 1 <= input_ids.shape[1] <= limit:
            raise ValueError(f"input_ids must have shape (batch, 1..{limit}), got {tuple(input_ids.shape)}")
        if not mx.issubdtype(input_ids.dtype, mx.integer):
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
