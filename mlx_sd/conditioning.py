"""Prompt text -> the UNet's cross-attention context (and SDXL's pooled vector), as A1111 does it.

For each text encoder (docs/facts.md §5.2):
1. the prompt is parsed into weighted fragments and BREAKs (`prompt_parser`); each fragment is
   tokenised without BOS/EOS; a textual-inversion embedding's name becomes its vectors, one position
   each, moved whole to the next chunk when they do not fit (mlx_sd.textual_inversion);
2. tokens fill 75-token chunks; when a chunk is full and a comma lies within the last 20 tokens, the
   tokens after that comma move to the next chunk; BREAK closes the chunk early;
3. each chunk becomes [BOS] + 75 tokens (padded with EOS) + [EOS]; for encoders whose pad id is not
   EOS (OpenCLIP), everything after the first EOS becomes the pad id (0);
4. each 77-token chunk is encoded on its own and the chunks are concatenated along the sequence, so
   long prompts are never truncated;
5. A1111 "Original" weighting per chunk: scale each token's hidden state by its weight, then rescale
   the chunk so its mean over tokens and channels is what it was before weighting.

SDXL runs this for CLIP-L and bigG and concatenates their contexts on the feature axis; the pooled
vector is bigG's, from the first chunk. The refiner has bigG alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .clip import CLIPTextModel
from .prompt_parser import Break, parse_prompt_attention
from .textual_inversion import EmbeddingMatch
from .tokenizer import CLIPTokenizer

CHUNK_TOKENS = 75  # text tokens per chunk; + BOS + EOS = 77 positions
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default
CACHE_SIZE = 16  # distinct prompts kept encoded
PLACEHOLDER_ID = 0  # the id under an embedding's vectors (A1111's); never an EOS, so pooling is unchanged
# (a fragment's tokens, a position) -> the embedding named there, for one text encoder
EmbeddingFinder = Callable[[Sequence[int], int], EmbeddingMatch | None]


@dataclass(frozen=True)
class PromptChunk:
    """One encoder input: 77 ids, the emphasis weight of each position, and the embeddings' vectors
    that replace the token vectors from a text position on (0 = the first token after BOS)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    embeddings: tuple[tuple[int, mx.array], ...] = ()


@dataclass(frozen=True)
class EncodedPrompt:
    """A batch of prompts as the text encoders give them: the cross-attention context (B, 77*k, C) and,
    for SDXL, the pooled vector (B, P). The denoiser's `Conditioning` is built from these."""

    context: mx.array
    pooled: mx.array | None = None


def _close_chunk(
    ids: list[int], weights: list[float], tokenizer: CLIPTokenizer, embeddings: Sequence[tuple[int, mx.array]] = ()
) -> PromptChunk:
    padding = CHUNK_TOKENS - len(ids)
    ids = [tokenizer.bos_id, *ids, *[tokenizer.eos_id] * padding, tokenizer.eos_id]
    weights = [1.0, *weights, *[1.0] * padding, 1.0]
    if tokenizer.pad_id != tokenizer.eos_id:
        first_eos = ids.index(tokenizer.eos_id)
        ids[first_eos + 1 :] = [tokenizer.pad_id] * (len(ids) - first_eos - 1)
    return PromptChunk(tuple(ids), tuple(weights), tuple(embeddings))


def prompt_chunks(
    prompt: str, tokenizer: CLIPTokenizer, comma_backtrack: int = COMMA_BACKTRACK, embeddings: EmbeddingFinder | None = None
) -> list[PromptChunk]:
    """Split a prompt into 77-token chunks with per-token weights (A1111's tokenize_line)."""
    chunks: list[PromptChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    placed: list[tuple[int, mx.array]] = []  # embeddings of the current chunk
    last_comma = -1  # position in `ids` of the latest comma of the current chunk

    def close(cut: int | None = None) -> None:
        nonlocal ids, weights, placed, last_comma
        cut = len(ids) if cut is None else cut
        chunks.append(_close_chunk(ids[:cut], weights[:cut], tokenizer, [e for e in placed if e[0] < cut]))
        placed = [(start - cut, vectors) for start, vectors in placed if start >= cut]
        ids, weights, last_comma = ids[cut:], weights[cut:], -1

    for item in parse_prompt_attention(prompt):
        if isinstance(item, Break):
            close()
            continue
        tokens = tokenizer.tokenize(item.text)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == tokenizer.comma_id:
                last_comma = len(ids)
            elif (
                comma_backtrack
                and len(ids) == CHUNK_TOKENS
                and last_comma != -1
                and len(ids) - last_comma <= comma_backtrack
            ):
                close(last_comma + 1)  # the chunk is full: end it at the comma, carry the words after it over
            if len(ids) == CHUNK_TOKENS:
                close()
            match = embeddings(tokens, position) if embeddings is not None else None
            if match is None:
                ids.append(token)
                weights.append(item.weight)
                position += 1
                continue
            count = match.vectors.shape[0]
            if len(ids) + count > CHUNK_TOKENS:
                close()
            placed.append((len(ids), match.vectors))
            ids.extend([PLACEHOLDER_ID] * count)
            weights.extend([item.weight] * count)
            position += match.length

    if ids or not chunks:
        close()
    return chunks


def token_vectors(model: CLIPTextModel, ids: mx.array, chunks: Sequence[PromptChunk]) -> mx.array | None:
    """The token vectors of `ids` (N, 77) with the chunks' embeddings in place, None when there are none."""
    if not any(chunk.embeddings for chunk in chunks):
        return None
    vectors = np.array(model.text_model.embeddings.token_embedding(ids).astype(mx.float32))
    for row, chunk in enumerate(chunks):
        for start, embedding in chunk.embeddings:
            vectors[row, 1 + start : 1 + start + embedding.shape[0]] = np.array(embedding)  # after BOS
    return mx.array(vectors)


def apply_emphasis(hidden: mx.array, weights: mx.array) -> mx.array:
    """A1111 "Original" emphasis on (N, 77, C) hidden states with (N, 77) weights, per chunk."""
    z = hidden.astype(mx.float32)
    mean_before = z.mean(axis=(1, 2), keepdims=True)
    z = z * weights[..., None]
    mean_after = z.mean(axis=(1, 2), keepdims=True)
    # A zero mean after weighting would give NaN in A1111; leave such a chunk unrescaled instead.
    scale = mx.where(mean_after == 0, 1.0, mean_before / mx.where(mean_after == 0, 1.0, mean_after))
    return (z * scale).astype(hidden.dtype)


def _pad_sequence(context: mx.array, length: int) -> mx.array:
    """A1111's stack_conds: lengthen (1, L, C) by repeating its last token vector."""
    missing = length - context.shape[1]
    if missing == 0:
        return context
    return mx.concatenate([context, mx.repeat(context[:, -1:], missing, axis=1)], axis=1)


class PromptEncoder:
    """Encodes prompts with a model's text encoders; identical prompts are encoded once.

    `tokenizers` and `text_encoders` are in the model's order: SD1 / SD2 one encoder, SDXL
    (CLIP-L, bigG), the refiner (bigG). `force_zeros_for_empty_prompt` is the ModelConfig flag
    (SDXL base): an all-empty negative prompt then gives zeros for context and pooled.
    """

    def __init__(
        self,
        tokenizers: Sequence[CLIPTokenizer],
        text_encoders: Sequence[CLIPTextModel],
        *,
        force_zeros_for_empty_prompt: bool = False,
        comma_backtrack: int = COMMA_BACKTRACK,
        embeddings: Sequence[EmbeddingFinder] | None = None,
    ):
        if not text_encoders or len(tokenizers) != len(text_encoders):
            raise ValueError(
                f"expected one tokenizer per text encoder (at least one), "
                f"got {len(tokenizers)} tokenizers and {len(text_encoders)} text encoders"
            )
        self.encoders = list(zip(tokenizers, text_encoders))
        self.embeddings: Sequence[EmbeddingFinder | None] = embeddings or [None] * len(self.encoders)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.comma_backtrack = comma_backtrack
        self._cache: OrderedDict[tuple[str, int], EncodedPrompt] = OrderedDict()

    def _encode_texts(self, texts: list[str], clip_skip: int) -> list[EncodedPrompt]:
        """Encode distinct texts: every chunk of every text in one call per encoder."""
        contexts: list[list[mx.array]] = [[] for _ in texts]
        pooled: list[mx.array | None] = [None] * len(texts)
        chunk_counts: list[int] | None = None
        for (tokenizer, model), embeddings in zip(self.encoders, self.embeddings):
            per_text = [prompt_chunks(text, tokenizer, self.comma_backtrack, embeddings) for text in texts]
            counts = [len(chunks) for chunks in per_text]
            if chunk_counts is not None and counts != chunk_counts:
                raise ValueError(
                    f"the text encoders' tokenizers split the prompts differently: {chunk_counts} vs {counts} chunks"
                )
            chunk_counts = counts
            flat = [chunk for chunks in per_text for chunk in chunks]
            ids = mx.array([chunk.ids for chunk in flat], dtype=mx.int32)
            weights = mx.array([chunk.weights for chunk in flat], dtype=mx.float32)
            output = model.encode(ids, clip_skip, token_vectors(model, ids, flat))
            hidden = apply_emphasis(output.hidden, weights)
            start = 0
            for i, count in enumerate(counts):
                contexts[i].append(hidden[start : start + count].reshape(1, -1, hidden.shape[-1]))
                if output.pooled is not None:
                    pooled[i] = output.pooled[start : start + 1]  # the first chunk's, as A1111
                start += count
        results = [
            EncodedPrompt(mx.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0], vector)
            for parts, vector in zip(contexts, pooled)
        ]
        mx.eval([(r.context, r.pooled) if r.pooled is not None else r.context for r in results])
        return results

    def clear_cache(self) -> None:
        """Forget every encoding: the text encoders' weights or the embeddings changed."""
        self._cache.clear()

    def _lookup(self, texts: Sequence[str], clip_skip: int) -> list[EncodedPrompt]:
        missing = list(dict.fromkeys(t for t in texts if (t, clip_skip) not in self._cache))
        if missing:
            for text, result in zip(missing, self._encode_texts(missing, clip_skip)):
                self._cache[(text, clip_skip)] = result
        found = []
        for text in texts:
            self._cache.move_to_end((text, clip_skip))
            found.append(self._cache[(text, clip_skip)])
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    def encode(self, prompts: Sequence[str], clip_skip: int = 1) -> EncodedPrompt:
        """A batch of prompts; prompts of fewer chunks are lengthened by repeating their last token
        vector (A1111's rule inside a batch)."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"expected a non-empty list of prompt strings, got {prompts!r}")
        parts = self._lookup(prompts, clip_skip)
        length = max(p.context.shape[1] for p in parts)
        context = mx.concatenate([_pad_sequence(p.context, length) for p in parts], axis=0)
        pooled = None if parts[0].pooled is None else mx.concatenate([p.pooled for p in parts], axis=0)
        return EncodedPrompt(context, pooled)

    def encode_for_guidance(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], clip_skip: int = 1
    ) -> tuple[EncodedPrompt, EncodedPrompt]:
        """(positive, negative) for classifier-free guidance, padded to the same number of tokens.

        The shorter side gets encodings of the empty prompt appended (A1111's pad_cond_uncond), so
        both go through the UNet in one batched call.
        """
        if isinstance(negative_prompts, str) or len(negative_prompts) != len(prompts):
            raise ValueError(
                f"expected one negative prompt per prompt ({len(prompts)}), got {negative_prompts!r}"
            )
        self._lookup([*prompts, "", *negative_prompts], clip_skip)  # every new text in one encoder call
        positive = self.encode(prompts, clip_skip)
        empty = self.encode([""], clip_skip)
        if self.force_zeros_for_empty_prompt and all(text == "" for text in negative_prompts):
            batch = len(negative_prompts)
            negative = EncodedPrompt(
                mx.zeros((batch, *empty.context.shape[1:]), dtype=empty.context.dtype),
                None if empty.pooled is None else mx.zeros((batch, *empty.pooled.shape[1:]), empty.pooled.dtype),
            )
        else:
            negative = self.encode(negative_prompts, clip_skip)
        length = max(positive.context.shape[1], negative.context.shape[1])
        return _pad_with_empty(positive, empty, length), _pad_with_empty(negative, empty, length)


def _pad_with_empty(cond: EncodedPrompt, empty: EncodedPrompt, length: int) -> EncodedPrompt:
    """Append whole empty-prompt chunks until the context has `length` tokens."""
    repeats = (length - cond.context.shape[1]) // empty.context.shape[1]
    if repeats == 0:
        return cond
    filler = mx.tile(empty.context, (cond.context.shape[0], repeats, 1))
    return EncodedPrompt(mx.concatenate([cond.context, filler], axis=1), cond.pooled)
