"""The window as a new user meets it (issue 18): at 1024x640, 1280x800 and 1920x1080 the prompt and
Generate are on screen and unclipped, no two laid-out widgets overlap, a 64 px result fills the view;
the wheel does not edit unfocused values; nothing resizes the window; the session comes back.

Set APP_SCREENSHOTS to a folder to keep the screenshots (docs/images/ holds the README's)."""

import os
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QPointF, QRect, QSize, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QApplication, QComboBox, QLineEdit, QPlainTextEdit, QWidget

from app.history_browser import install_history_browser
from app.main_window import MainWindow
from app.result_view import ResultItem
from app.settings import AppSettings
from app_support import QT_MARKS, ScriptedPipeline, fake_model_folder, noise_image, open_window, scripted_loader

pytestmark = QT_MARKS
TIMEOUT = 20_000
SIZES = [(1024, 640), (1280, 800), (1920, 1080)]


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    fake_model_folder(folder / "models" / "tiny", native=64)
    return folder


def sized_window(qtbot, library: Path, width: int, height: int, **kwargs) -> MainWindow:
    window = open_window(qtbot, library, **kwargs)
    window.resize(width, height)
    qtbot.waitUntil(lambda: window.size() == QSize(width, height), timeout=TIMEOUT)
    QApplication.processEvents()
    return window


def window_rect(widget: QWidget) -> QRect:
    return QRect(widget.mapTo(widget.window(), QPoint(0, 0)), widget.size())


def fully_shown(widget: QWidget) -> bool:
    """Visible, inside the window and not clipped by a scroll area or a neighbour."""
    inside = widget.window().rect().contains(window_rect(widget))
    return widget.isVisible() and inside and widget.visibleRegion().boundingRect() == widget.rect()


def overlapping_siblings(root: QWidget) -> list[tuple[str, str]]:
    """Pairs of visible widgets placed by the same layout whose rectangles intersect."""
    found = []
    for parent in [root, *root.findChildren(QWidget)]:
        layout = parent.layout()
        if layout is None or not parent.isVisible():
            continue
        children = [w for w in parent.findChildren(QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly)
                    if w.isVisible() and _in_sublayout(layout, w)]
        for i, first in enumerate(children):
            for second in children[i + 1:]:
                if first.geometry().intersects(second.geometry()):
                    found.append((_name(first), _name(second)))
    return found


def _in_sublayout(layout, widget: QWidget) -> bool:
    for i in range(layout.count()):
        item = layout.itemAt(i)
        if item.widget() is widget or (item.layout() is not None and _in_sublayout(item.layout(), widget)):
            return True
    return False


def _name(widget: QWidget) -> str:
    text = widget.accessibleName() or (widget.text() if hasattr(widget, "text") and callable(widget.text) else "")
    return f"{type(widget).__name__}({text})"


@pytest.mark.parametrize("width,height", SIZES)
def test_prompt_generate_and_image_are_on_screen(qtbot, library: Path, tmp_path: Path, width: int, height: int) -> None:
    window = sized_window(qtbot, library, width, height)
    window.prompt_panel.prompt_edit.setPlainText("a lighthouse at dusk, oil painting")
    window.result_view.set_results([ResultItem(noise_image(3, 64, 64), 3, "a lighthouse")])
    QApplication.processEvents()
    shot = window.grab()
    folder = Path(os.environ.get("APP_SCREENSHOTS", "") or tmp_path)  # pytest removes its old tmp_paths
    assert shot.save(str(folder / f"app-{width}x{height}.png"))

    assert window.size() == QSize(width, height)  # the window's minimum fits
    for widget in (window.prompt_panel.prompt_edit, window.prompt_panel.negative_edit, window.generate_button,
                   window.cancel_button, window.progress, window.picker.combo):
        assert fully_shown(widget), _name(widget)
    assert overlapping_siblings(window) == []
    view = window.result_view.scroll.viewport()
    shown = window.result_view.canvas.image_rect()
    assert shown.width() >= min(view.width(), view.height()) / 2  # the 64 px image fills the view
    assert view.rect().contains(shown)


def test_overlap_check_finds_overlaps(qtbot) -> None:
    from PySide6.QtWidgets import QHBoxLayout, QLabel

    root = QWidget()
    qtbot.addWidget(root)
    row = QHBoxLayout(root)
    first, second = QLabel("first"), QLabel("second")
    row.addWidget(first)
    row.addWidget(second)
    root.show()
    assert overlapping_siblings(root) == []
    second.setGeometry(first.geometry())  # what a layout never does
    assert overlapping_siblings(root) == [("QLabel(first)", "QLabel(second)")]


def test_the_wheel_edits_only_a_focused_control(qtbot, library: Path) -> None:
    window = sized_window(qtbot, library, 1024, 640)
    parameters = window.parameters
    parameters.advanced.set_expanded(True)
    window.prompt_panel.prompt_edit.setFocus()

    def wheel(widget: QWidget, notches: int) -> None:
        centre = QPointF(widget.rect().center())
        event = QWheelEvent(centre, QPointF(widget.mapToGlobal(centre.toPoint())), QPoint(0, 0), QPoint(0, -120 * notches),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(widget, event)

    bar = window.parameters_scroll.verticalScrollBar()
    before = bar.value()
    for control in (parameters.cfg, parameters.sampler, parameters.steps, parameters.init_image.strength):
        values = parameters.values()
        wheel(control, 3)
        assert parameters.values() == values, _name(control)
    assert bar.value() > before  # the panel scrolled instead
    parameters.cfg.setFocus()
    qtbot.waitUntil(parameters.cfg.hasFocus, timeout=TIMEOUT)
    wheel(parameters.cfg, 2)
    assert parameters.cfg.value() != 7.0  # focused, the wheel edits it


def test_the_window_keeps_its_size_after_a_batch_and_an_error(qtbot, library: Path) -> None:
    window = sized_window(qtbot, library, 1024, 640)
    controls = {w: window_rect(w) for w in (window.generate_button, window.prompt_panel.prompt_edit, window.progress,
                                            window.result_view.save_button, window.result_view.scroll, window.tabs)}
    window.parameters.set_values({"steps": 2, "batch_size": 2, "batch_count": 2, "seed": 5})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        window.generate()
    QApplication.processEvents()
    assert window.size() == QSize(1024, 640) and window.result_view.showing_grid()
    window.show_error("The model could not be loaded", "unet.safetensors is missing; " * 8)
    QApplication.processEvents()
    assert window.message_bar.isVisible() and window.size() == QSize(1024, 640)
    assert fully_shown(window.message_bar) and window.tabs.tabBar().isVisible()  # over the image, below the tabs
    assert {w: window_rect(w) for w in controls} == controls  # nothing moved the controls
    window.message_bar.dismiss()
    QApplication.processEvents()
    assert window.size() == QSize(1024, 640)
    assert window.minimumSizeHint().height() <= 600 and window.minimumSizeHint().width() <= 960


def test_state_comes_back_after_a_restart(qtbot, library: Path, tmp_path: Path) -> None:
    session = tmp_path / "config" / "session.json"
    first = MainWindow(AppSettings(), library, None, loader=scripted_loader(ScriptedPipeline()), demo_folder=None,
                       session_path=session)
    qtbot.addWidget(first)
    first.show()
    first.resize(960, 690)  # the offscreen screen is 800 px wide: restoring clamps larger windows
    first.parameters.apply_preset("Quick")
    first.prompt_panel.set_prompts("a red fox in snow", "blurry")
    first.parameters.set_values({"cfg_scale": 4.5, "sampler": "Euler a", "seed": 77, "vae_tiling": True})
    first.parameters.advanced.set_expanded(True)
    first.splitter.setSizes([420, 540])
    sizes = first.splitter.sizes()
    first_history = install_history_browser(first)
    first.tabs.setCurrentIndex(1)
    first_history.browser.splitter.setSizes([150, 400])
    history_sizes = first_history.browser.splitter.sizes()
    assert first.parameters.preset_label() == "Custom"  # a value differs from Quick's
    values = first.parameters.values()
    first.close()

    second = MainWindow(AppSettings(), library, None, loader=scripted_loader(ScriptedPipeline()), demo_folder=None,
                        session_path=session)
    qtbot.addWidget(second)
    second_history = install_history_browser(second)
    second.restore_session()
    second.tabs.setCurrentIndex(1)
    second.show()
    qtbot.waitUntil(lambda: second.size() == QSize(960, 690), timeout=TIMEOUT)
    assert (second.prompt_panel.prompt(), second.prompt_panel.negative_prompt()) == ("a red fox in snow", "blurry")
    assert second.parameters.values() == values
    assert second.parameters.advanced.is_expanded() and second.splitter.sizes() == sizes
    assert second_history.browser.splitter.sizes() == history_sizes  # a panel's divider too
    assert second.parameters.preset_label() == "Custom"


def test_a_preset_reads_custom_once_a_value_differs(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    window.parameters.apply_preset("Quick")
    assert window.parameters.preset_label() == "Quick"
    window.parameters.set_native_size(64)  # the model's sizes are not the user's change
    assert window.parameters.preset_label() == "Quick"
    window.parameters.steps.setValue(window.parameters.steps.value() + 1)
    assert window.parameters.preset_label() == "Custom"


def activate(qtbot, window: QWidget) -> None:
    """Make `window` the active one, as a click on it would (shortcuts go to the active window)."""
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=TIMEOUT)


def test_keyboard_generates_and_cancels_and_controls_have_names(qtbot, library: Path) -> None:
    window = open_window(qtbot, library, ScriptedPipeline(step_seconds=0.05))
    window.parameters.set_values({"steps": 40})
    window.prompt_panel.prompt_edit.setFocus()
    with qtbot.waitSignal(window.controller.cancelled, timeout=TIMEOUT):
        qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        assert window.controller.busy
        activate(qtbot, window)
        qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Escape)
    activate(qtbot, window)
    window.prompt_panel.prompt_edit.setFocus()
    for following in (window.prompt_panel.negative_edit, window.generate_button):
        qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        assert following.hasFocus(), QApplication.focusWidget()
    window.parameters.advanced.set_expanded(True)
    controls = (QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit, QAbstractButton)
    unnamed = [
        w for w in window.findChildren(QWidget)
        if isinstance(w, controls) and w.isVisible() and w.focusPolicy() != Qt.FocusPolicy.NoFocus
        and not w.accessibleName() and not (isinstance(w, QAbstractButton) and w.text())
        and not isinstance(w.parentWidget(), (QAbstractSpinBox, QComboBox))  # a spin box's own line edit
    ]
    assert unnamed == [], [_name(w) + ' in ' + _name(w.parentWidget()) for w in unnamed]


def test_cpu_kernels_are_prepared_in_the_background_and_a_run_waits_for_them(qtbot, library: Path) -> None:
    import threading

    from app.kernel_warmup import KernelWarmup
    from app.main_window import PREPARING_KERNELS_TEXT

    window = open_window(qtbot, library)
    built = threading.Event()
    warmup = KernelWarmup(lambda: "ready" if built.wait(TIMEOUT / 1000) else "timed out", window)
    window.prepare_cpu_kernels(warmup)
    assert window.statusBar().currentMessage() == PREPARING_KERNELS_TEXT  # said at start, before any Generate

    window.parameters.set_values({"steps": 2})
    assert window.generate() is not None
    assert window.progress_label.text() == PREPARING_KERNELS_TEXT and not window.controller.busy
    window.cancel()  # a waiting run is dropped
    assert window.generate_button.isEnabled() and window.progress_label.text().startswith("Cancelled")

    assert window.generate() is not None
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        built.set()  # the compile ends: the waiting run starts by itself
    assert window.statusBar().currentMessage() == "CPU kernels: ready"
    assert window.result_view.current_item() is not None


def test_news_hides_itself_but_errors_and_offers_stay(qtbot, library: Path, monkeypatch) -> None:
    window = open_window(qtbot, library)
    bar = window.message_bar
    bar._expiry.setInterval(50)
    window.show_info("Imported tiny", "It is selected and ready to generate with.")
    qtbot.waitUntil(lambda: not bar.isVisible(), timeout=TIMEOUT)
    window.show_error("The model could not be loaded", "unet is missing")
    window.show_info("x.png carries generation parameters", "Restore?", [("Restore Parameters", lambda: None)])
    qtbot.wait(200)
    assert bar.isVisible() and bar.action_labels() == ["Restore Parameters"]


def test_models_dialog_says_one_thing_in_one_place(qtbot, tmp_path: Path) -> None:
    from app.model_manager import install_model_manager

    demo = fake_model_folder(tmp_path / "resources" / "demo", native=64)
    window = MainWindow(AppSettings(), tmp_path / "library", None, loader=scripted_loader(ScriptedPipeline()), demo_folder=demo)
    qtbot.addWidget(window)
    window.show()
    plugin = install_model_manager(window)
    dialog = plugin.open()
    assert dialog.model.rowCount() == 1  # the demo is listed...
    assert dialog.empty_label.text().startswith("Only the bundled demo model so far.")  # ...and not denied
    plugin.importer.failed.emit("the file is not a checkpoint")
    assert dialog.message.text() == "The model could not be imported: the file is not a checkpoint"
    assert not window.message_bar.isVisible()  # the open dialog says it; the window does not say it again
    dialog.close()
    qtbot.waitUntil(lambda: not plugin._dialog_open(), timeout=TIMEOUT)
    plugin.importer.failed.emit("the file is not a checkpoint")
    assert window.message_bar.isVisible() and window.message_bar.kind == "error"


def test_a_damaged_session_file_means_a_fresh_window(tmp_path: Path) -> None:
    from app.session_state import SessionState, load_session

    path = tmp_path / "session.json"
    assert load_session(path) == SessionState()
    path.write_text("{not json", encoding="utf-8")
    assert load_session(path) == SessionState()
    path.write_text('{"prompt": 5, "negative_prompt": "blurry", "params": [], "advanced_open": true}', encoding="utf-8")
    assert load_session(path) == SessionState(negative_prompt="blurry", advanced_open=True)


def test_a_batch_grid_gives_each_image_the_most_room(qtbot) -> None:
    from app.result_view import ImageCanvas

    canvas = ImageCanvas()
    qtbot.addWidget(canvas)
    canvas.resize(640, 520)
    canvas.set_pictures([noise_image(s, 64, 64) for s in range(4)])
    rects = canvas.image_rects()
    assert len({r.top() for r in rects}) == 2 and len({r.left() for r in rects}) == 2  # 2 x 2, not 3 + 1
    assert all(not a.intersects(b) for i, a in enumerate(rects) for b in rects[i + 1:])
    assert rects[0].width() >= 240


def test_the_kernel_outcome_in_words(monkeypatch) -> None:
    from app import kernel_warmup
    from mlx_sd.cpu.kernels import KernelStatus

    status = lambda: KernelStatus(None, "no C++ compiler (g++) found")  # noqa: E731
    monkeypatch.setattr(kernel_warmup, "engine_prepare_cpu_kernels", status)
    assert kernel_warmup.prepare_cpu_kernels() == "not used (no C++ compiler (g++) found)"
    monkeypatch.setattr(kernel_warmup, "engine_prepare_cpu_kernels", lambda: KernelStatus(kernel_warmup, "compiled"))
    assert kernel_warmup.prepare_cpu_kernels() == "ready"


def test_damaged_parameters_in_the_session_do_not_stop_the_window(qtbot, library: Path, tmp_path: Path) -> None:
    from app.session_state import SessionState, save_session

    session = tmp_path / "session.json"
    save_session(SessionState(prompt="kept", params={"steps": "many", "vae_tiling": "sometimes"}), session)
    window = MainWindow(AppSettings(), library, None, loader=scripted_loader(ScriptedPipeline()), demo_folder=None,
                        session_path=session)
    qtbot.addWidget(window)
    window.restore_session()
    assert window.prompt_panel.prompt() == "kept" and window.parameters.values()["steps"] == 20
    assert "could not be restored" in window.statusBar().currentMessage()


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_parameter_rows_are_never_cut_off_at_the_right(qtbot, library: Path, width: int, height: int) -> None:
    """The parameters scroll only vertically, so their viewport must be as wide as their widest row."""
    window = sized_window(qtbot, library, width, height)
    assert window.parameters_scroll.viewport().width() >= window.parameters.minimumSizeHint().width()
