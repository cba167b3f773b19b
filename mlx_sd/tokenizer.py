"""CLIP's byte-level BPE tokenizer, shared by every SD text encoder (sd_facts 3).

Text is cleaned the way OpenAI CLIP and open_clip clean it (ftfy, HTML unescape twice, whitespace
collapse, lower-case), split by CLIP's pre-tokenisation regex, mapped byte-by-byte to printable
characters and merged by the `tokenizers` library's BPE with the `</w>` end-of-word suffix.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import ftfy
from tokenizers import Regex, Tokenizer, pre_tokenizers
from tokenizers.models import BPE

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
COMMA_TOKEN = ",</w>"
END_OF_WORD = "</w>"
CONTEXT_LENGTH = 77  # BOS + 75 tokens + EOS
# Special tokens, English contractions, letter runs, single digits, runs of other non-space symbols.
PRETOKEN_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BUNDLED_FOLDER = Path(__file__).resolve().parent.parent / "resources" / "clip_tokenizer"

_WHITESPACE = re.compile(r"\s+")


class TokenizerError(ValueError):
    """A tokenizer folder is missing files or does not hold a CLIP vocabulary."""


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy, HTML unescape (twice, as CLIP does), whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip().lower()


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Keep the regex matches, drop what lies between them (whitespace); then map bytes to printable
    # chars. The byte-level regex is off: CLIP's pre-tokens must not be split again.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


class CLIPTokenizer:
    """Prompt text -> CLIP token ids.

    `tokenize` gives the BPE ids alone (no BOS/EOS, never truncated, so prompt code can split long
    prompts into chunks); calling the tokenizer gives the 77 ids a text encoder takes.
    """

    def __init__(self, backend: Tokenizer, pad_token_id: int, source: str = "tokenizer"):
        backend.normalizer = None  # clean_text normalises, so every source behaves alike
        backend.pre_tokenizer = _pre_tokenizer()
        backend.post_processor = None
        backend.no_truncation()  # a tokenizer.json may carry its own padding and truncation
        backend.no_padding()
        self._backend = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        ids = {}
        for token in (BOS_TOKEN, EOS_TOKEN, COMMA_TOKEN):
            ids[token] = backend.token_to_id(token)
            if ids[token] is None:
                raise TokenizerError(f"{source}: vocabulary has no {token!r} token; expected a CLIP BPE vocabulary")
        if not 0 <= pad_token_id < self.vocab_size:
            raise TokenizerError(f"pad_token_id must be in [0, {self.vocab_size}), got {pad_token_id}")
        self.bos_id: int = ids[BOS_TOKEN]
        self.eos_id: int = ids[EOS_TOKEN]
        self.comma_id: int = ids[COMMA_TOKEN]
        self.pad_id: int = pad_token_id

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], pad_token_id: int) -> "CLIPTokenizer":
        """Read `tokenizer.json`, or else `vocab.json` + `merges.txt` (a diffusers tokenizer folder).

        `pad_token_id` is the family's padding (sd_facts 3.3): 49407 (EOS) for OpenAI CLIP-L,
        0 for OpenCLIP ViT-H / bigG.
        """
        folder = Path(folder)
        tokenizer_json = folder / "tokenizer.json"
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        if tokenizer_json.is_file():
            backend = Tokenizer.from_file(str(tokenizer_json))
            if not isinstance(backend.model, BPE) or backend.model.end_of_word_suffix != END_OF_WORD:
                raise TokenizerError(
                    f"{tokenizer_json}: expected a BPE model with end-of-word suffix {END_OF_WORD!r}, "
                    f"found {type(backend.model).__name__}"
                )
        elif vocab.is_file() and merges.is_file():
            backend = _from_vocab_and_merges(vocab, merges)
        else:
            raise TokenizerError(
                f"{folder} is not a tokenizer folder: expected tokenizer.json or vocab.json + merges.txt, "
                f"found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'no such folder'}"
            )
        return cls(backend, pad_token_id, source=str(folder))

    @classmethod
    def bundled(cls, pad_token_id: int) -> "CLIPTokenizer":
        """The CLIP vocabulary shipped with mlx-sd (identical for CLIP-L, OpenCLIP ViT-H and bigG)."""
        return cls.from_folder(BUNDLED_FOLDER, pad_token_id)

    def tokenize(self, text: str) -> list[int]:
        return self._backend.encode(clean_text(text), add_special_tokens=False).ids

    def __call__(self, text: str) -> list[int]:
        """BOS, the first 75 tokens, EOS, then padding to 77 ids."""
        tokens = self.tokenize(text)[: CONTEXT_LENGTH - 2]
        ids = [self.bos_id, *tokens, self.eos_id]
        return ids + [self.pad_id] * (CONTEXT_LENGTH - len(ids))


def _from_vocab_and_merges(vocab_path: Path, merges_path: Path) -> Tokenizer:
    vocab: dict[str, int] = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = [line for line in merges_path.read_text(encoding="utf-8").split("\n") if line]
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    # The merge file may list more merges than the vocabulary holds results for (OpenAI's full list);
    # CLIP uses one merge per id after the 2 x 256 byte tokens, before the 2 special tokens.
    merges = []
    for line in lines[: len(vocab) - 512 - 2]:
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerError(f"{merges_path}: expected merge lines 'a b', found {line!r}")
        merges.append((pair[0], pair[1]))
    model = BPE(
        vocab, merges, continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, unk_token=EOS_TOKEN, fuse_unk=False
    )
    backend = Tokenizer(model)
    # Registered as special so that a typed "<|endoftext|>" maps to its id, as in CLIP.
    backend.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    return backend
