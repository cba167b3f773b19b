"""The history browser offscreen: search, filters, details, reuse, img2img source, export, delete."""

import dataclasses
from datetime import datetime

import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog, QMessageBox

from app import history_browser
from app.history_browser import DATE_RANGES, HistoryBrowser, date_since, detail_rows, export_entry, request_from_entry
from app.history_store import Generation, HistoryEntry, HistoryQuery, HistoryStore
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import format_infotext
from mlx_sd.request import GenerationRequest

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    # the offscreen platform plugin says this for every top-level window with a layout
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

NOW = datetime(2026, 11, 21, 15, 30).timestamp()
DAY = 86400.0


def record(store, prompt, seed, model="demo", created=NOW, negative="blurry", **fields):
    """Record an image the way the generation worker does: the request's fields as params."""
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, seed=-1, width=64, height=48, **fields)
    params = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)
              if f.name not in ("init_image", "mask", "latents")}
    params.update(img2img=False, seed=seed)
    generation = Generation(prompt, negative, model, seed, 64, 48, params, format_infotext(request, seed), created)
    return store.add(Image.new("RGB", (64, 48), (seed * 20 % 255, 90, 160)), generation)


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "library")
    yield s
    s.close()


@pytest.fixture
def browser(qtbot, store):
    record(store, "a red circle on a blue background", 1, "demo", NOW - 40 * DAY)
    record(store, "small green star in the corner", 2, "sd15", NOW - 3 * DAY, steps=12, sampler="Euler a")
    record(store, "a red square, white background", 3, "demo", NOW - 3600, cfg_scale=5.5, clip_skip=2)
    widget = HistoryBrowser(store, now=lambda: NOW)
    qtbot.addWidget(widget)
    widget.resize(1000, 700)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def shown_prompts(browser):
    model = browser.model
    while model.canFetchMore():
        model.fetchMore()
    return [model.entry(r).generation.prompt for r in range(model.rowCount())]


def test_opens_newest_first_with_the_first_selected(browser):
    assert shown_prompts(browser) == [
        "a red square, white background", "small green star in the corner", "a red circle on a blue background",
    ]
    assert browser.count_label.text() == "3 images"
    assert browser.selected_row() == 0
    assert not browser.preview.pixmap().isNull()
    assert [browser.model_filter.itemText(i) for i in range(browser.model_filter.count())] == ["All models", "demo", "sd15"]


def test_search_as_you_type(qtbot, browser):
    browser.search_box.setText("red backg")
    qtbot.waitUntil(lambda: browser.model.total == 2, timeout=2000)  # after the typing pause
    assert shown_prompts(browser) == ["a red square, white background", "a red circle on a blue background"]
    browser.search_box.setText("nothing like this")
    browser.search_box.returnPressed.emit()  # Enter searches at once
    assert browser.model.total == 0 and browser.count_label.text() == "0 images"
    assert browser.grid.isHidden() and browser.empty_label.text() == "No images match the search and filters."
    assert not browser.actions_by_name["reuse"].isEnabled()


def test_filters_by_model_date_and_favourite(browser):
    browser.model_filter.setCurrentText("demo")
    browser.apply_filters()
    assert len(shown_prompts(browser)) == 2
    browser.date_filter.setCurrentText("Past 7 days")
    browser.apply_filters()
    assert shown_prompts(browser) == ["a red square, white background"]
    browser.model_filter.setCurrentIndex(0)
    browser.apply_filters()
    assert len(shown_prompts(browser)) == 2
    browser.date_filter.setCurrentText("Today")
    browser.apply_filters()
    assert len(shown_prompts(browser)) == 1
    browser.date_filter.setCurrentText("Any time")
    browser.apply_filters()
    browser.select_row(1)
    browser.actions_by_name["favourite"].trigger()
    assert browser.actions_by_name["favourite"].text() == "Unfavourite"
    assert browser.model.index(1).data().startswith("\u2605 ")
    browser.favourites_only.setChecked(True)  # filters at once
    assert shown_prompts(browser) == ["small green star in the corner"]
    browser.actions_by_name["favourite"].trigger()  # unfavourite: it leaves the favourites-only grid
    assert shown_prompts(browser) == [] and browser.count_label.text() == "0 images"


def test_date_ranges_start_at_local_midnight():
    midnight = datetime(2026, 11, 21).timestamp()
    assert date_since("Any time", NOW) is None
    assert date_since("Today", NOW) == midnight
    assert date_since("Past 7 days", NOW) == datetime(2026, 11, 15).timestamp()
    assert date_since("Past 30 days", NOW) == datetime(2026, 10, 23).timestamp()
    assert set(DATE_RANGES) == {"Any time", "Today", "Past 7 days", "Past 30 days", "Past year"}


def test_details_pane_shows_the_parameters_that_apply_under_human_labels(browser):
    browser.select_row(1)
    text = browser.details.toPlainText()
    entry = browser.selected_entry()
    assert entry.generation.params["img2img"] is False
    for expected in ("small green star in the corner", "blurry", "sd15", "Seed", "2", "64 \u00d7 48",
                     str(entry.image_path), "Steps", "12", "Sampler", "Euler a", "CFG scale"):
        assert expected in text, expected
    # raw field names, defaults that say nothing and a strength that did nothing (txt2img) are left out
    for absent in ("cfg_scale", "batch_size", "img2img", "vae_tiling", "Denoising strength", "Low memory"):
        assert absent not in text, absent
    g = entry.generation
    img2img = dataclasses.replace(entry, generation=dataclasses.replace(g, params={**g.params, "img2img": True}))
    rows = dict(detail_rows(img2img))
    assert rows["Mode"] == "image to image" and rows["Denoising strength"] == str(g.params["strength"])


def test_copy_parameters_gives_a1111_text(qtbot, browser):
    browser.select_row(1)
    browser.actions_by_name["copy"].trigger()
    assert QGuiApplication.clipboard().text() == browser.selected_entry().generation.infotext
    assert browser.last_message == "Copied the parameters"


def test_reuse_parameters_seed_and_img2img_source(qtbot, browser):
    browser.select_row(0)
    with qtbot.waitSignal(browser.reuse_parameters) as reused:
        browser.actions_by_name["reuse"].trigger()
    request, model = reused.args
    assert model == "demo"
    assert request == GenerationRequest(
        prompt="a red square, white background", negative_prompt="blurry", seed=3, width=64, height=48,
        cfg_scale=5.5, clip_skip=2,
    )
    browser.select_row(1)
    with qtbot.waitSignal(browser.reuse_seed) as seed:
        browser.actions_by_name["seed"].trigger()
    assert seed.args == [2]
    with qtbot.waitSignal(browser.use_as_source) as source:
        browser.actions_by_name["source"].trigger()
    assert source.args == [str(browser.selected_entry().image_path)]
    centre = browser.grid.visualRect(browser.model.index(1)).center()
    with qtbot.waitSignal(browser.reuse_parameters) as reused:  # a double click reuses too
        qtbot.mouseClick(browser.grid.viewport(), Qt.MouseButton.LeftButton, pos=centre)
        qtbot.mouseDClick(browser.grid.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    assert reused.args[0].steps == 12 and reused.args[0].sampler == "Euler a"


def test_request_from_entry_falls_back_to_the_infotext(tmp_path):
    infotext = "a cat\nNegative prompt: dog\nSteps: 33, Sampler: DPM++ 2M Karras, CFG scale: 4, Seed: 9, Size: 128x64"
    generation = Generation("a cat", "dog", "m", 9, 128, 64, {"steps": "bad", "width": True, "strength": 1}, infotext)
    request = request_from_entry(HistoryEntry(1, generation, tmp_path / "x.png", False))
    assert (request.steps, request.sampler, request.schedule, request.cfg_scale) == (33, "DPM++ 2M", "Karras", 4.0)
    assert (request.width, request.height, request.seed, request.strength) == (128, 64, 9, 1.0)
    assert isinstance(request.strength, float)


def test_open_and_reveal(monkeypatch, browser):
    calls = []
    monkeypatch.setattr(history_browser, "open_path", lambda p: calls.append(("open", p)))
    monkeypatch.setattr(history_browser, "reveal_path", lambda p: calls.append(("reveal", p)))
    browser.actions_by_name["open"].trigger()
    browser.actions_by_name["reveal"].trigger()
    path = browser.selected_entry().image_path
    assert calls == [("open", path), ("reveal", path)]


@pytest.mark.parametrize("name", ["copy.png", "copy.jpg", "copy.webp", "no-suffix"])
def test_export_keeps_the_parameters(monkeypatch, tmp_path, browser, name):
    target = tmp_path / "out" / name
    target.parent.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    browser.actions_by_name["export"].trigger()
    written = target if target.suffix else target.with_name(name + ".png")
    assert written.is_file()
    assert read_infotext(written) == browser.selected_entry().generation.infotext
    assert browser.last_message == f"Exported to {written}"


def test_export_failure_is_a_message(monkeypatch, tmp_path, browser):
    with pytest.raises(OSError):
        export_entry(browser.selected_entry(), tmp_path / "missing-folder" / "x.png")
    target = tmp_path / "missing-folder" / "y.jpg"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    browser.actions_by_name["export"].trigger()
    assert browser.last_message.startswith("Could not export the image:")
    assert "y.jpg" in browser.last_message


def test_delete_one_image_after_confirmation(monkeypatch, store, browser):
    answers = []

    def answer(reply):
        def question(parent, title, text, *args):
            answers.append(text)
            return reply
        return question

    victim = browser.model.entry(1)
    browser.select_row(1)
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Cancel))
    browser.actions_by_name["delete"].trigger()
    assert victim.image_path.exists() and store.count() == 3
    assert victim.image_path.name in answers[0]
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    deleted = []
    browser.entry_deleted.connect(deleted.append)
    browser.actions_by_name["delete"].trigger()
    assert not victim.image_path.exists()
    assert store.count() == 2 and store.get(victim.id) is None
    assert deleted == [victim.id]
    assert browser.count_label.text() == "2 images"
    assert browser.selected_row() == 1  # the next image is selected
    assert all(p.exists() for p in (store.get(e.id).image_path for e in store.page(HistoryQuery(), 0, 10)))


def test_reload_after_new_images_and_empty_history(qtbot, tmp_path):
    store = HistoryStore(tmp_path / "empty")
    browser = HistoryBrowser(store)
    qtbot.addWidget(browser)
    assert browser.empty_label.text() == "No images yet: everything you generate is kept here."
    assert browser.count_label.text() == "0 images" and browser.grid.isHidden()
    record(store, "first picture", 5, "new-model")
    browser.reload()
    assert browser.count_label.text() == "1 image" and not browser.grid.isHidden()
    assert browser.model_filter.findText("new-model") > 0
    store.close()


def test_set_store_switches_library(qtbot, tmp_path, browser):
    other = HistoryStore(tmp_path / "other")
    record(other, "from the other library", 7)
    browser.set_store(other)
    assert shown_prompts(browser) == ["from the other library"]
    other.close()


def test_a_missing_image_file_shows_a_placeholder_and_its_actions_a_message(monkeypatch, tmp_path, browser):
    entry = browser.selected_entry()
    entry.image_path.unlink()  # deleted behind the app's back
    browser.select_row(1)
    browser.select_row(0)
    assert browser.preview.pixmap().isNull() and "missing" in browser.preview.text()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "out.png"), ""))
    browser.export_selection()
    assert "Could not export" in browser.last_message


def test_a_history_that_cannot_be_read_is_a_message_not_a_traceback(browser, store):
    store.close()  # every read now fails inside SQLite
    browser.search_box.setText("circle")
    browser.apply_filters()
    browser.reload()
    assert "cannot read the history" in browser.last_message
    assert browser.model.rowCount() == 3  # what was shown stays
