"""How the history browser behaves with many entries: `python -m benchmarks.history_browser [--entries 10000]`.

Builds a library of N images like benchmarks.history, then times what a user does in the browser
widget (offscreen unless QT_QPA_PLATFORM says otherwise), each step including a full paint of the
widget (`grab()`) so decoding the visible thumbnails counts: open the browser, search as one types,
filter by model and date, select an image (details and preview), scroll through every page, delete one.
Prints a table and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication, QLabel  # noqa: E402

from app.history_browser import HistoryBrowser  # noqa: E402
from app.history_store import HistoryStore  # noqa: E402
from benchmarks.history import populate, timed  # noqa: E402


def painted(browser: HistoryBrowser, step) -> None:
    step()
    QApplication.processEvents()
    browser.grab()  # paints every visible thumbnail now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    figures: dict[str, float] = {"entries": args.entries}
    with tempfile.TemporaryDirectory() as folder:
        library = Path(folder) / "library"
        figures["setup_s"], _ = timed(lambda: populate(library, args.entries))
        holder: dict[str, object] = {}

        def open_browser() -> None:
            start = time.perf_counter()
            store = HistoryStore(library)  # finishes interrupted adds; the full scan runs on the worker thread
            figures["open_store_s"] = time.perf_counter() - start
            # "now" just after the newest entry, so the date filters match part of the history
            browser = HistoryBrowser(store, now=lambda: 1.7e9 + args.entries)
            browser.resize(1200, 800)
            browser.show()
            holder.update(store=store, browser=browser)
            QApplication.processEvents()
            browser.grab()

        warm_up = QLabel("the first widget shown loads fonts and the style: not the browser's cost")
        warm_up.show()
        warm_up.grab()
        warm_up.close()
        figures["open_s"], _ = timed(open_browser)
        browser: HistoryBrowser = holder["browser"]  # type: ignore[assignment]
        store: HistoryStore = holder["store"]  # type: ignore[assignment]
        figures["visible_rows"] = browser.model.rowCount()

        def search(text: str) -> None:
            browser.search_box.setText(text)
            browser.apply_filters()

        for name, text in (("search_word", "castle"), ("search_prefix", "tri"), ("search_two_words", "red star"),
                           ("search_typing_c", "c"), ("search_none", "zebra")):
            figures[f"{name}_s"], _ = timed(lambda: painted(browser, lambda: search(text)))
        figures["clear_search_s"], _ = timed(lambda: painted(browser, lambda: search("")))

        def model_filter() -> None:
            browser.model_filter.setCurrentText("sdxl")
            browser.apply_filters()

        figures["filter_model_s"], _ = timed(lambda: painted(browser, model_filter))

        def date_filter() -> None:
            browser.model_filter.setCurrentIndex(0)
            browser.date_filter.setCurrentText("Today")
            browser.apply_filters()

        figures["filter_date_s"], _ = timed(lambda: painted(browser, date_filter))
        figures["filter_date_matches"] = browser.model.total
        browser.date_filter.setCurrentIndex(0)
        browser.apply_filters()
        figures["select_image_s"], _ = timed(lambda: painted(browser, lambda: browser.select_row(5)))

        def scroll_all() -> int:
            pages = 0
            bar = browser.grid.verticalScrollBar()
            while browser.model.canFetchMore():
                bar.setValue(bar.maximum())
                QApplication.processEvents()
                pages += 1
            browser.grab()
            return pages

        figures["scroll_all_s"], pages = timed(scroll_all)
        figures["pages"] = pages
        figures["per_page_s"] = figures["scroll_all_s"] / max(1, pages)
        assert browser.model.rowCount() == args.entries, (browser.model.rowCount(), args.entries)
        figures["delete_one_s"], _ = timed(lambda: painted(browser, lambda: browser.model.delete(0)))
        browser.close()
        store.close()
    del app
    for key, value in figures.items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
