"""Derive the bundled CLIP tokenizer folder (vocab.json, merges.txt) from OpenAI's BPE merge list.

The merge list `bpe_simple_vocab_16e6.txt.gz` ships inside the `open-clip-torch` wheel. This script
fetches the wheel with `pip download` (or takes `--wheel PATH`), checks the gz against its known
sha256, and writes the transformers/diffusers tokenizer-folder files (docs/facts.md §3.1):

    vocab.json             {token: id} for the 49408 ids: 256 byte-chars, the same with `</w>`,
                           one token per used merge, then <|startoftext|> and <|endoftext|>
    merges.txt             `#version: 0.2` then the 48,894 used merges
    tokenizer_config.json  lets transformers' CLIPTokenizer.from_pretrained read the folder

Usage: python scripts/make_clip_vocab.py [--wheel PATH] [--out resources/clip_tokenizer]
It never installs open-clip-torch (that would pull torchvision).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "open-clip-torch==3.3.0"
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
GZ_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_SIZE = 49408
# The vocabulary has room for 49152 - 256 (byte tokens) - 2 (BOS, EOS) merges beyond the byte tokens.
USED_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "resources" / "clip_tokenizer"


def byte_chars() -> list[str]:
    """The printable stand-in for each byte value, in vocabulary order (GPT-2 / CLIP scheme).

    Bytes that are already printable map to themselves and come first, in byte order; the other 68
    bytes (controls, space, NBSP, soft hyphen...) follow, mapped to chr(256), chr(257), ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps", "--dest", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {WHEEL_REQUIREMENT} left no open_clip_torch wheel in {dest}")
    return wheels[0]


def read_merges(wheel: Path) -> list[str]:
    """The used merge lines from the wheel's gz, after checking its sha256."""
    with zipfile.ZipFile(wheel) as archive:
        if MEMBER not in archive.namelist():
            raise SystemExit(f"{wheel} has no {MEMBER}; expected an open-clip-torch wheel")
        data = archive.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != GZ_SHA256:
        raise SystemExit(f"{MEMBER} in {wheel} has sha256 {digest}, expected {GZ_SHA256}")
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    # Line 0 is a header; the file holds more merges than the 49408-id vocabulary uses.
    return lines[1 : USED_MERGES + 1]


def build_vocab(merges: list[str]) -> dict[str, int]:
    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"built {len(vocab)} distinct tokens from {len(tokens)}, expected {VOCAB_SIZE}")
    return vocab


def write_folder(out: Path, vocab: dict[str, int], merges: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {WHEEL_REQUIREMENT} wheel (default: pip download it)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        merges = read_merges(wheel)
    if len(merges) != USED_MERGES or merges[0] != "i n" or merges[-1] != "jeky ll</w>":
        raise SystemExit(f"unexpected merge list: {len(merges)} merges from {merges[0]!r} to {merges[-1]!r}")
    write_folder(args.out, build_vocab(merges), merges)
    print(f"wrote {VOCAB_SIZE} tokens and {len(merges)} merges to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
