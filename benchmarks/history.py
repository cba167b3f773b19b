"""How the history behaves with many entries: `python -m benchmarks.history [--entries 10000]`.

Builds a library of N images (tiny PNGs written without fsync to keep set-up short, rows inserted as
the store does), then times what the app does: open the store, the full images-folder reconciliation
(which the app runs on its worker thread), count, fetch the first page of the grid, and full-text
searches. Prints a table and, as its last
line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

from app.history_store import Generation, HistoryQuery, HistoryStore, encode_png, make_thumbnail

WORDS = "red green blue yellow circle square triangle star small large corner background portrait castle".split()


def populate(library: Path, entries: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    store = HistoryStore(library)
    picture = Image.new("RGB", (64, 64), (120, 40, 200))
    thumbnail = make_thumbnail(picture)
    for i in range(entries):
        prompt = " ".join(rng.choice(WORDS) for _ in range(8))
        generation = Generation(prompt, "blurry", rng.choice(["demo", "sd15", "sdxl"]), i, 64, 64,
                                {"prompt": prompt, "seed": i}, prompt, created=1.7e9 + i)
        path = library / "images" / f"{i // 1000:03d}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(picture, generation))
        store._insert(generation, path, thumbnail)
    store.close()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        library = Path(folder) / "library"
        setup, _ = timed(lambda: populate(library, args.entries))
        figures: dict[str, float] = {"entries": args.entries, "setup_s": setup}
        figures["open_s"], store = timed(lambda: HistoryStore(library))
        figures["full_reconcile_s"], _ = timed(store.reconcile_all)  # the worker thread's scan
        figures["count_s"], count = timed(lambda: store.count())
        figures["first_page_s"], _ = timed(lambda: store.page(HistoryQuery(), 0, 100))
        figures["thumbnails_100_s"], _ = timed(lambda: [store.thumbnail(i) for i in range(1, 101)])
        for name, text in (("search_word", "castle"), ("search_prefix", "tri"), ("search_two_words", "red star")):
            figures[f"{name}_s"], _ = timed(
                lambda: (store.count(HistoryQuery(text=text)), store.page(HistoryQuery(text=text), 0, 100))
            )
        figures["filter_model_s"], _ = timed(lambda: store.page(HistoryQuery(model="sdxl"), 0, 100))
        store.close()
    assert count == args.entries
    for key, value in figures.items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
