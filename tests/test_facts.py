"""Citations of docs/facts.md name sections that exist, and nothing cites a fact sheet outside the
repository."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "docs" / "facts.md"
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")
OUTSIDE_SHEET = "sd_" + "facts"  # split so that this file does not cite it


def repository_texts() -> dict[Path, str]:
    """Every .py and .md file of the checkout, skipping hidden and build folders."""
    texts = {}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("build", "dist", "__pycache__")]
        for name in files:
            if name.endswith((".py", ".md")):
                path = Path(folder, name)
                texts[path] = path.read_text(encoding="utf-8", errors="replace")
    return texts


@pytest.fixture(scope="module")
def texts() -> dict[Path, str]:
    return repository_texts()


def sections() -> set[str]:
    return set(HEADING.findall(FACTS.read_text(encoding="utf-8")))


def test_facts_are_numbered_sections():
    numbers = sections()
    assert {"1", "1.1", "4.4", "7.2"} <= numbers
    chapters = sorted({number.split(".")[0] for number in numbers}, key=int)
    assert chapters == [str(n) for n in range(1, len(chapters) + 1)], "chapters are numbered without gaps"


def test_every_citation_names_an_existing_section(texts):
    """Every `§N.N` in a file that cites docs/facts.md (and in facts.md itself) is one of its sections."""
    known = sections()
    cited: dict[str, list[str]] = {}
    for path, text in texts.items():
        if path == FACTS or "docs/facts.md" in text:
            for number in SECTION.findall(text):
                cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    assert len(cited) >= 20, f"only {len(cited)} sections cited: is the citation pattern still `docs/facts.md §N.N`?"
    missing = {number: files for number, files in cited.items() if number not in known}
    assert not missing, f"cited sections that docs/facts.md lacks: {missing}"


def test_nothing_cites_the_fact_sheet_outside_the_repository(texts):
    citing = sorted(str(path.relative_to(ROOT)) for path, text in texts.items() if OUTSIDE_SHEET in text.lower())
    assert not citing, f"{OUTSIDE_SHEET} is outside the repository; cite docs/facts.md instead: {citing}"
