"""CLIP's byte-level BPE tokenizer, shared by every SD text encoder (docs/facts.md §3).

Text is cleaned the way OpenAI CLIP and open_clip clean it (ftfy, HTML unescape twice, whitespace
collapse, lower-case), split by CLIP's pre-tokenisation regex, mapped byte-by-byte to printable
characters and merged by the `tokenizers` library's BPE with the `</w>` end-of-word suffix.

The ids equal A1111's and OpenAI CLIP's. transformers' tokenizer differs only in cleaning: version 5
(tokenizers-backed) skips ftfy and HTML unescaping and lower-cases character by character (no
final sigma); version 4's Python tokenizer relied on ftfy's own HTML unescaping, which ftfy skips
in text containing '<'.
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

from .resources import resource

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
OPENCLIP_PAD_TOKEN = "!"  # id 0: SD2 / SDXL bigG pad with zeros (docs/facts.md §3.2); OpenAI CLIP pads with EOS
COMMA_TOKEN = ",</w>"
END_OF_WORD = "</w>"
CONTEXT_LENGTH = 77  # BOS + 75 tokens + EOS
# Special tokens, English contractions, letter runs, single digits, runs of other non-space symbols.
PRETOKEN_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BUNDLED_FOLDER = resource("clip_tokenizer")

_WHITESPACE = re.compile(r"\s+")


class TokenizerError(ValueError):
    """A tokenizer folder is missing files or does not hold a CLIP vocabulary; the message names the file."""


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

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token_id: int, source: str = "tokenizer"):
        for token in (BOS_TOKEN, EOS_TOKEN, COMMA_TOKEN):
            if token not in vocab:
                raise TokenizerError(f"{source}: vocabulary has no {token!r} token; expected a CLIP BPE vocabulary")
        if not 0 <= pad_token_id < len(vocab):
            raise TokenizerError(f"{source}: pad_token_id must be in [0, {len(vocab)}), got {pad_token_id}")
        try:
            model = BPE(
                vocab, merges, continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, unk_token=EOS_TOKEN,
                fuse_unk=False,
            )
        except Exception as exc:  # the tokenizers library raises plain Exception for a vocabulary it cannot use
            raise TokenizerError(f"{source}: the vocabulary and merges do not form a BPE tokenizer ({exc})") from None
        self._backend = Tokenizer(model)
        # No normalizer: clean_text does CLIP's cleaning before the backend sees the text.
        self._backend.pre_tokenizer = _pre_tokenizer()
        # Registered as special so that a typed "<|endoftext|>" maps to its id, as in CLIP.
        self._backend.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
        self.vocab_size = len(vocab)
        self.bos_id: int = vocab[BOS_TOKEN]
        self.eos_id: int = vocab[EOS_TOKEN]
        self.comma_id: int = vocab[COMMA_TOKEN]
        self.pad_id: int = pad_token_id

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], pad_token_id: int) -> "CLIPTokenizer":
        """Read `tokenizer.json`, or else `vocab.json` + `merges.txt` (a diffusers tokenizer folder).

        Only the vocabulary and merges are taken from the files, so every folder tokenizes alike.
        `pad_token_id` is the family's padding (docs/facts.md §3.2): 49407 (EOS) for OpenAI CLIP-L,
        0 for OpenCLIP ViT-H / bigG.
        """
        folder = Path(folder)
        tokenizer_json = folder / "tokenizer.json"
        vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
        if tokenizer_json.is_file():
            vocab, merges = _read_tokenizer_json(tokenizer_json)
            source = tokenizer_json
        elif vocab_json.is_file() and merges_txt.is_file():
            vocab, merges = _read_vocab_and_merges(vocab_json, merges_txt)
            source = vocab_json
        else:
            raise TokenizerError(
                f"{folder} is not a tokenizer folder: expected tokenizer.json or vocab.json + merges.txt, "
                f"found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'no such folder'}"
            )
        return cls(vocab, merges, pad_token_id, source=str(source))

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


def _read_vocab_and_merges(vocab_path: Path, merges_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = _checked_vocab(read_json(vocab_path), vocab_path)
    lines = [line for line in _read_text(merges_path).split("\n") if line]
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    # The merge file may list more merges than the vocabulary holds results for (OpenAI's full list);
    # CLIP uses one merge per id after the 2 x 256 byte tokens, before the 2 special tokens.
    return vocab, [_merge_pair(line, merges_path) for line in lines[: max(len(vocab) - 512 - 2, 0)]]


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    data = read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("end_of_word_suffix") != END_OF_WORD:
        found = f"a {model.get('type')!s:.40} model with suffix {model.get('end_of_word_suffix')!r:.40}" if isinstance(model, dict) else "no model"
        raise TokenizerError(f"{path}: expected a BPE model with end-of-word suffix {END_OF_WORD!r}, found {found}")
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise TokenizerError(f"{path}: expected a list of merges in model.merges, found {merges!r:.60}")
    # tokenizers writes merges as "a b" strings (before 0.20) or as [a, b] pairs.
    return _checked_vocab(model.get("vocab"), path), [_merge_pair(m, path) for m in merges]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not UTF-8 text; the file is damaged") from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot be read ({exc.strerror})") from None


def read_json(path: Path) -> object:
    """A tokenizer folder's JSON file; TokenizerError names it when it is damaged."""
    try:
        return json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc.__class__.__name__}); the file is damaged") from None


def _checked_vocab(vocab: object, path: Path) -> dict[str, int]:
    """A vocabulary maps each token to its own id in 0..size-1."""
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"{path}: expected a vocabulary object of token: id, found {vocab!r:.60}")
    ids = set()
    for token, index in vocab.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(vocab) or index in ids:
            raise TokenizerError(f"{path}: token {token!r:.40} has id {index!r:.40}; ids must be 0..{len(vocab) - 1}, each once")
        ids.add(index)
    return vocab


def _merge_pair(merge: object, source: Path) -> tuple[str, str]:
    pair = merge.split(" ") if isinstance(merge, str) else merge
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
        raise TokenizerError(f"{source}: expected merges of the form 'a b', found {merge!r:.60}")
    return pair[0], pair[1]
