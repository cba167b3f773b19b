"""Downloading a diffusers repository from the Hugging Face Hub in chunks, so that Cancel stops the
download itself (huggingface_hub's snapshot_download cannot be interrupted until a file is complete).

Only the files a conversion reads are fetched (the converter's own allow_patterns), from HF_ENDPOINT
(https://huggingface.co unless set), with the user's Hugging Face token for gated repos. Qt-free.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from convert import ConversionCancelled, ConversionError, ConversionProgress
from convert.hub import allow_patterns

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20  # bytes read between two looks at Cancel
TIMEOUT_SECONDS = 30
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


@dataclass(frozen=True)
class RepoFile:
    name: str  # the path inside the repository
    size: int  # bytes (0 when the Hub did not say)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def _token() -> str | None:
    try:
        from huggingface_hub import get_token  # the token `hf auth login` saved, or HF_TOKEN
    except ImportError:
        return None
    return get_token()


def _open(url: str, token: str | None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)


def _explain(error: Exception, repo_id: str) -> ConversionError:
    if isinstance(error, urllib.error.HTTPError):
        if error.code in (401, 403):
            return ConversionError(f"{repo_id} is gated or private: accept its licence on huggingface.co and log in (hf auth login)")
        if error.code == 404:
            return ConversionError(f"{repo_id}: no such repository on the Hugging Face Hub")
        return ConversionError(f"the Hugging Face Hub answered {error.code} {error.reason} for {repo_id}; try again later")
    return ConversionError(f"the Hugging Face Hub cannot be reached ({error}); check the network and try again")


def repo_files(repo_id: str, revision: str, token: str | None) -> list[RepoFile]:
    """The repository's files with their sizes."""
    quoted = urllib.parse.quote(repo_id, safe="/")
    url = f"{endpoint()}/api/models/{quoted}/revision/{urllib.parse.quote(revision, safe='')}?blobs=true"
    try:
        with _open(url, token) as response:
            info = json.load(response)
    except NETWORK_ERRORS as exc:
        raise _explain(exc, repo_id) from None
    except ValueError:
        raise ConversionError(f"the Hugging Face Hub's answer about {repo_id} is not JSON") from None
    siblings = info.get("siblings") if isinstance(info, dict) else None
    if not isinstance(siblings, list):
        raise ConversionError(f"the Hugging Face Hub did not list the files of {repo_id}")
    return [
        RepoFile(s["rfilename"], s.get("size") if isinstance(s.get("size"), int) else 0)
        for s in siblings if isinstance(s, dict) and isinstance(s.get("rfilename"), str)
    ]


def wanted(files: list[RepoFile], variant: str | None) -> list[RepoFile]:
    """The files a conversion reads, by the converter's own patterns."""
    patterns = allow_patterns(variant)
    return [f for f in files if any(fnmatch.fnmatchcase(f.name, p) for p in patterns)]


def available_variant(files: list[RepoFile], variant: str | None) -> str | None:
    """`variant` when the repository publishes its UNet in it, else None (the full-precision files):
    not every pipeline has fp16 files."""
    if variant is None:
        return None
    unet = [f for f in wanted(files, variant) if f.name.startswith("unet/") and f.name.endswith(".safetensors")]
    return variant if unet else None


def _safe_target(folder: Path, name: str) -> Path:
    target = (folder / name).resolve()
    if folder.resolve() not in target.parents:  # a hostile listing must not write outside the folder
        raise ConversionError(f"the Hub listed a file outside the repository: {name!r}")
    return target


def download_repo(
    repo_id: str,
    folder: Path,
    variant: str | None = None,
    revision: str = "main",
    on_progress: Callable[[ConversionProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> str | None:
    """Download the files a conversion of `repo_id` reads into `folder` (created; must not exist).
    Reports ConversionProgress("download", megabytes done, megabytes in all, file). Raises ConversionCancelled
    within one chunk of `cancel()` turning true, and ConversionError saying what went wrong; either
    way `folder` is removed, so nothing half-downloaded is left. Returns the variant downloaded (None
    when the repository has no files in `variant`)."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ConversionError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set; unset it to download")
    notify = on_progress or (lambda progress: None)
    stop = cancel or (lambda: False)
    token = _token()
    folder.mkdir(parents=True)
    try:
        listing = repo_files(repo_id, revision, token)
        variant = available_variant(listing, variant)
        files = wanted(listing, variant)
        if not any(f.name == "model_index.json" for f in files):
            raise ConversionError(f"{repo_id} is not a diffusers pipeline (no model_index.json)")
        total = sum(f.size for f in files)
        done = 0
        for file in files:
            target = _safe_target(folder, file.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            url = f"{endpoint()}/{urllib.parse.quote(repo_id, safe='/')}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(file.name)}"
            try:
                with _open(url, token) as response, open(target, "wb") as out:
                    while chunk := response.read(CHUNK):
                        if stop():
                            raise ConversionCancelled()
                        out.write(chunk)
                        done += len(chunk)
                        notify(ConversionProgress("download", done // 1_000_000, max(total, done) // 1_000_000, file.name))
            except NETWORK_ERRORS as exc:
                raise _explain(exc, repo_id) from None
            except OSError as exc:  # the disk, not the network
                raise ConversionError(f"cannot write {target}: {exc}") from None
        return variant
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
