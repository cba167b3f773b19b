"""A1111's resource hashes: `Lora hashes` (sha256 after the safetensors header, or `sshs_model_hash`) and
`TI hashes` (sha256 of the whole file), written into the infotext and parsed back."""

from __future__ import annotations

import hashlib

import numpy as np
from safetensors.numpy import save_file

from mlx_sd.infotext import format_infotext, hashes_value, parse_infotext, resource_hashes
from mlx_sd.request import GenerationRequest
from mlx_sd.resource_hashes import embedding_hash, lora_hash


def test_lora_hash_skips_the_header_so_metadata_edits_keep_it(tmp_path):
    tensors = {"unet.a.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    plain, tagged = tmp_path / "plain.safetensors", tmp_path / "tagged.safetensors"
    save_file(tensors, str(plain))
    save_file(tensors, str(tagged), metadata={"ss_output_name": "tagged"})
    data = plain.read_bytes()
    after_header = data[8 + int.from_bytes(data[:8], "little"):]
    assert lora_hash(plain) == hashlib.sha256(after_header).hexdigest()[:12] == lora_hash(tagged)
    assert lora_hash(tagged, {"sshs_model_hash": "ABCDEF0123456789"}) == "abcdef012345"
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"not really a pickle")
    assert lora_hash(pickle) == hashlib.sha256(b"not really a pickle").hexdigest()[:12]


def test_ti_hash_is_the_whole_files(tmp_path):
    path = tmp_path / "neg.safetensors"
    save_file({"emb_params": np.ones((2, 4), np.float32)}, str(path))
    assert embedding_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_hashes_round_trip_through_the_infotext():
    request = GenerationRequest(prompt="a cat <lora:a,b:0.5>", negative_prompt="EasyNegative")
    extra = {"Lora hashes": hashes_value({"a,b": "0123456789ab", "x:y": "ba9876543210"}),
             "TI hashes": hashes_value({"EasyNegative": "c0ffee000000"})}  # fmt: skip
    info = parse_infotext(format_infotext(request, 1, None, extra))
    assert info.prompt == "a cat <lora:a,b:0.5>"
    assert resource_hashes(info.params, "Lora hashes") == {"ab": "0123456789ab", "xy": "ba9876543210"}
    assert resource_hashes(info.params, "TI hashes") == {"EasyNegative": "c0ffee000000"}
    assert resource_hashes(info.params, "VAE hash") == {}
    assert resource_hashes({"Lora hashes": "broken, : , name:"}, "Lora hashes") == {}
