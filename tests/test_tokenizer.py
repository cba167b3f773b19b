"""The CLIP tokenizer against docs/facts.md §3.3, transformers' CLIPTokenizerFast, and an independent
pure-Python CLIP BPE (OpenAI's published algorithm, with ftfy) written here as the reference."""

from __future__ import annotations

import html
import json
import shutil
import unicodedata
from functools import lru_cache
from pathlib import Path

import ftfy
import pytest
import regex
import transformers

from mlx_sd.tokenizer import BUNDLED_FOLDER, CLIPTokenizer, TokenizerError, clean_text

EOS, BOS = 49407, 49406

# Token ids of docs/facts.md §3.3.
KNOWN_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "A photo of an astronaut riding a horse on mars": [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407,
    ],
    "(masterpiece:1.2), best quality, 1girl": [
        49406, 263, 12066, 281, 272, 269, 273, 2361, 949, 3027, 267, 272, 1611, 49407,
    ],
    "hello, world!  I'm 123": [49406, 3306, 267, 1002, 256, 328, 880, 272, 273, 274, 49407],
}

LONG_PROMPT = ", ".join(f"detailed element number {i} with intricate ornaments" for i in range(40))

# Prompts on which CLIP's cleaning (ftfy, HTML unescape) changes nothing that transformers' fast
# tokenizer (NFC, whitespace, lower-case only) would not also change.
PLAIN_PROMPTS = [
    "",
    "   ",
    "a cat",
    "A Photo Of A CAT",
    "masterpiece, best quality, (ultra-detailed:1.3), [blurry], {old style}",
    "portrait of a woman, 85mm, f/1.8, 4k, 8K UHD, 2024-05-01, 3.14159",
    "it's a dog's life, they're here, we've been, I'm, you'll, he'd, don't, can't",
    "hello!!! what??? ...and... --- *** ### @user #tag $100 50% a+b=c ~tilde~ `code`",
    "café naïve résumé Zoë Ångström señor façade",
    "Straße ÆØÅ œuvre İstanbul Ελληνικά Русский текст",
    "日本語のテキスト 中文提示词 한국어 프롬프트",
    "emoji 🐱🚀✨ 👩‍👩‍👧 🇯🇵 ❤️",
    "arabic مرحبا hebrew שלום hindi नमस्ते thai สวัสดี",
    "  lots \t of\n\nwhitespace \r\n here  ",
    "non\u00a0breaking\u2003em\u3000ideographic space",
    "math ∑ ∫ √ ≤ ≥ ≠ ∞ π ° ± × ÷ ½ ² ³",
    "zero\u200bwidth soft\u00adhyphen combining e\u0301 tab\ttab",
    "<|startoftext|> typed specials <|endoftext|> in text",
    "under_score snake_case CamelCase kebab-case dots.and.more",
    LONG_PROMPT,
    "a" * 400,
    "😀" * 100,
]

# Prompts that CLIP's cleaning changes: HTML entities, curly quotes, ligatures, full-width letters,
# mojibake, control characters, and Python's context-aware lower-casing (final sigma).
CLEANED_PROMPTS = [
    "tom &amp; jerry &lt;3 &quot;quoted&quot; &#169; &eacute;t&eacute;",
    "double &amp;amp; escaped &amp;lt;tag&amp;gt;",
    "x < y &amp; z",
    "“smart quotes” ‘single’ – en dash",
    "ﬁne ﬂowers ＡＢＣ ｆｕｌｌｗｉｄｔｈ １２３",
    "cafÃ© mojibake Ã¼ber",
    "control\x00chars\x07here\x1c\x85",
    "dutch ĳ ligature, greek ΟΔΟΣ ends in a final sigma",
]


# --- reference: OpenAI CLIP's simple tokenizer algorithm, written out in Python -----------------

def _byte_chars() -> dict[int, str]:
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


class ReferenceTokenizer:
    pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self, folder: Path):
        self.vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")[1:]
        self.ranks = {tuple(line.split(" ")): rank for rank, line in enumerate(lines)}
        self.byte_chars = _byte_chars()

    @lru_cache(maxsize=None)
    def bpe(self, word: str) -> tuple[str, ...]:
        if word in ("<|startoftext|>", "<|endoftext|>"):
            return (word,)
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def tokenize(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for word in self.pattern.findall(text):
            mapped = "".join(self.byte_chars[b] for b in word.encode("utf-8"))
            ids.extend(self.vocab[token] for token in self.bpe(mapped))
        return ids


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer.bundled(pad_token_id=EOS)


@pytest.fixture(scope="module")
def reference() -> ReferenceTokenizer:
    return ReferenceTokenizer(BUNDLED_FOLDER)


@pytest.fixture(scope="module")
def hf_fast() -> transformers.PreTrainedTokenizerBase:
    return transformers.CLIPTokenizerFast.from_pretrained(str(BUNDLED_FOLDER))


def test_bundled_vocabulary_layout():
    vocab = json.loads((BUNDLED_FOLDER / "vocab.json").read_text(encoding="utf-8"))
    merges = (BUNDLED_FOLDER / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
    assert len(vocab) == 49408 and sorted(vocab.values()) == list(range(49408))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["Ġ"] == 256 - 68 + 32
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS and vocab[",</w>"] == 267
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert merges[1] == "i n" and merges[-1] == "jeky ll</w>"
    assert vocab["in"] == 512 and vocab["jekyll</w>"] == 49405


@pytest.mark.parametrize("text", list(KNOWN_IDS))
def test_known_token_ids(ours, text):
    assert ours(text)[: len(KNOWN_IDS[text])] == KNOWN_IDS[text]


def test_special_ids(ours):
    assert (ours.bos_id, ours.eos_id, ours.comma_id, ours.pad_id) == (BOS, EOS, 267, EOS)
    assert ours.vocab_size == 49408


@pytest.mark.parametrize("text", PLAIN_PROMPTS + CLEANED_PROMPTS)
def test_matches_reference_bpe(ours, reference, text):
    assert ours.tokenize(text) == reference.tokenize(text)


@pytest.mark.parametrize("text", PLAIN_PROMPTS)
def test_matches_transformers_fast(ours, hf_fast, text):
    assert ours.tokenize(text) == hf_fast(text, add_special_tokens=False).input_ids
    expected = hf_fast(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert ours(text) == expected


@pytest.mark.parametrize("text", CLEANED_PROMPTS)
def test_cleaning_is_the_only_difference_from_transformers_fast(ours, hf_fast, text):
    # transformers' fast tokenizer skips ftfy and HTML unescaping; fed our cleaned text it agrees.
    assert ours.tokenize(text) == hf_fast(clean_text(text), add_special_tokens=False).input_ids


def test_cleaning_examples():
    assert clean_text("  Tom &amp;amp; “Jerry”\n\tＡＢＣ ﬁ ") == 'tom & "jerry" abc fi'


def test_unicode_sweep_matches_reference(ours, reference):
    # Every 13th assigned code point (Python's Unicode tables) of the BMP and some astral ones, a few
    # per string, in varied contexts. Left out: code points unassigned in Python's tables (the
    # `regex` module may know a newer Unicode) and U+0345, which the reference's case-insensitive
    # regex drops entirely (it case-folds to a letter yet matches no letter class).
    points = [*range(0x20, 0x10000, 13), *range(0x1F300, 0x1F700, 29), 0x20000, 0x2A6D6, 0xE0001]
    points = [cp for cp in points if unicodedata.category(chr(cp)) not in ("Cn", "Cs") and cp != 0x345]
    for start in range(0, len(points), 8):
        text = " ".join(f"a{chr(cp)}b {chr(cp)}" for cp in points[start : start + 8])
        assert ours.tokenize(text) == reference.tokenize(text), text


def test_padding_with_eos(ours):
    ids = ours("a photo of a cat")
    assert len(ids) == 77
    assert ids[:7] == KNOWN_IDS["a photo of a cat"] and set(ids[7:]) == {EOS}


def test_padding_with_zero(hf_fast):
    ours0 = CLIPTokenizer.bundled(pad_token_id=0)
    ids = ours0("a photo of a cat")
    assert ids[:7] == KNOWN_IDS["a photo of a cat"] and ids[7:] == [0] * 70
    # transformers' own pad-"!" tokenizer would also split every typed "!" out as a special token,
    # so compare with its EOS-padded ids, zeroed after the closing EOS.
    for text in PLAIN_PROMPTS:
        expected = hf_fast(text, padding="max_length", max_length=77, truncation=True).input_ids
        closing = min(len(hf_fast(text, add_special_tokens=False).input_ids), 75) + 1
        assert ours0(text) == expected[: closing + 1] + [0] * (76 - closing)


def test_empty_and_long_prompts(ours):
    assert ours("") == [BOS, EOS] + [EOS] * 75
    assert ours.tokenize("") == []
    tokens = ours.tokenize(LONG_PROMPT)
    assert len(tokens) > 300  # never truncated
    ids = ours(LONG_PROMPT)
    assert len(ids) == 77 and ids[0] == BOS and ids[-1] == EOS and ids[1:76] == tokens[:75]
    exactly_75 = ours("cat " * 75)
    assert exactly_75 == [BOS] + [2368] * 75 + [EOS]
    huge = "word, " * 20000
    assert len(ours.tokenize(huge)) == 40000 and len(ours(huge)) == 77


def test_from_folder_reads_tokenizer_json(tmp_path):
    # Saved like SDXL's tokenizer_2 (pad "!"): its added "!" token must not change tokenization.
    transformers.CLIPTokenizerFast.from_pretrained(str(BUNDLED_FOLDER), pad_token="!").save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file() and not (tmp_path / "vocab.json").exists()
    from_json = CLIPTokenizer.from_folder(tmp_path, pad_token_id=0)
    bundled = CLIPTokenizer.bundled(pad_token_id=0)
    for text in PLAIN_PROMPTS + CLEANED_PROMPTS:
        assert from_json(text) == bundled(text)
    assert from_json.tokenize("wow!!!") == bundled.tokenize("wow!!!") != [bundled.tokenize("wow")[0], 0, 0, 0]
    # merges written as "a b" strings (older tokenizers versions) read the same
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert CLIPTokenizer.from_folder(tmp_path, pad_token_id=0)(LONG_PROMPT) == bundled(LONG_PROMPT)
    data["model"]["type"] = "WordPiece"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="expected a BPE model .* found a WordPiece model"):
        CLIPTokenizer.from_folder(tmp_path, pad_token_id=0)


def test_from_folder_errors(tmp_path):
    with pytest.raises(TokenizerError, match="expected tokenizer.json or vocab.json"):
        CLIPTokenizer.from_folder(tmp_path, pad_token_id=0)
    with pytest.raises(TokenizerError, match="no such folder"):
        CLIPTokenizer.from_folder(tmp_path / "missing", pad_token_id=0)
    with pytest.raises(TokenizerError, match=r"pad_token_id must be in \[0, 49408\), got 49408"):
        CLIPTokenizer.bundled(pad_token_id=49408)
    shutil.copy(BUNDLED_FOLDER / "vocab.json", tmp_path / "vocab.json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\ni n t\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="expected merges of the form"):
        CLIPTokenizer.from_folder(tmp_path, pad_token_id=0)


@pytest.mark.parametrize(
    "file, damage, message",
    [
        ("vocab.json", b"\xff\xfe not text", "vocab.json: not UTF-8 text"),
        ("vocab.json", b'{"a": 0,', "vocab.json: not valid JSON"),
        ("vocab.json", b"[" * 100_000, "vocab.json: not valid JSON"),  # nesting deeper than the recursion limit
        ("vocab.json", b'["a", "b"]', "vocab.json: expected a vocabulary object"),
        ("vocab.json", b'{"a": "0"}', r"vocab.json: token 'a' has id '0'"),
        ("vocab.json", b'{"a": 0, "b": 0}', r"vocab.json: token 'b' has id 0; ids must be 0..1, each once"),
        ("vocab.json", b'{"a": -1}', r"vocab.json: token 'a' has id -1"),
        ("vocab.json", b'{"<|startoftext|>": 0, "<|endoftext|>": 1, ",</w>": 2}', "vocab.json: pad_token_id must be"),
        ("merges.txt", b"#version: 0.2\nzz\xff yy\n", "merges.txt: not UTF-8 text"),
        ("merges.txt", b"#version: 0.2\nq\xc3\xa9 \xe2\x82\xac\n", "vocab.json: the vocabulary and merges do not form"),
    ],
)
def test_damaged_vocabulary_files_are_named_in_the_error(tmp_path, file, damage, message):
    shutil.copy(BUNDLED_FOLDER / "vocab.json", tmp_path / "vocab.json")
    shutil.copy(BUNDLED_FOLDER / "merges.txt", tmp_path / "merges.txt")
    (tmp_path / file).write_bytes(damage)
    with pytest.raises(TokenizerError, match=message):
        CLIPTokenizer.from_folder(tmp_path, pad_token_id=5)


@pytest.mark.parametrize(
    "document, message",
    [
        ([], "tokenizer.json: expected a BPE model .* found no model"),
        ({"model": {"type": "BPE", "end_of_word_suffix": "</w>", "vocab": {}, "merges": "a b"}}, "expected a list of merges"),
        ({"model": {"type": "BPE", "end_of_word_suffix": "</w>", "vocab": [], "merges": []}}, "expected a vocabulary object"),
        ({"model": {"type": "BPE", "end_of_word_suffix": "</w>", "vocab": {"a": 0}, "merges": [[1, 2]]}}, "merges of the form"),
    ],
)
def test_damaged_tokenizer_json_is_named_in_the_error(tmp_path, document, message):
    (tmp_path / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        CLIPTokenizer.from_folder(tmp_path, pad_token_id=0)
