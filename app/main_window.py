"""The main window: prompt and parameters on the left, the result on the right, generation on a
worker thread, drag and drop anywhere.

Where the rest of the app plugs in (the history browser, model manager and settings dialog):
- `menu(title)` gives a top-level menu ("File", "Edit", "View", "Models") to add actions to;
- `add_panel(title, widget)` adds a tab beside the image (the history browser), shown from View;
- `set_checkpoint_importer(fn)`: dropped or chosen checkpoints are handed to `fn(path)`;
- `refresh_models(select)` after a model was imported, renamed or deleted;
- `apply_settings(settings)` after the settings dialog (which saved them), `update_settings(settings)` to
  apply and save a change made elsewhere (the default model), both emitting `settingsApplied(settings)`;
  `release_library()` before moving the library;
- `reuse_request(request, model)`, `reuse_seed(seed)`, `use_image_file_as_source(path)` for history actions;
- `show_history_entry(entry)` shows a history image large in the result view;
- `request_transforms`: functions each request from the widgets passes through (the Blend tab's);
- `restore_hooks`: functions given each restored request and, when it came from an image's parameters, its
  infotext (None for a history entry's `reuse_request`), returning notes for the window's message (the
  Blend tab's restored blend, the LoRA panel's missing LoRAs, the VAE choice's);
- `resourcesChanged(kind)` after a dropped LoRA, embedding, VAE or upscaler was copied into the library;
- `imageRecorded(HistoryEntry)` is emitted for every image recorded in the history.

With the setting `serve_api` the window serves the A1111 API on localhost (`api`, app.api_service);
the worker runs the API's jobs between the window's own, and the window shows whichever job runs.

With a `session_path` the prompts, parameters, geometry and panel sizes are saved on close and come back
with `restore_session()` (call it once every panel is installed).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from PIL import Image
from PySide6.QtCore import QByteArray, QSize, Qt, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from mlx_sd.infotext import Infotext, parse_infotext, request_from_infotext
from mlx_sd.library import LABELS, Library
from mlx_sd.request import GenerationRequest, RequestError

from mlx_sd.model_library import DEMO_FOLDER, ModelInfo, ModelLibrary

from .api_service import ApiService
from .drop_handler import CHECKPOINT_FILTER, DropFilter, DropItem, DropKind, classify_file
from .generation_worker import (
    GenerationController,
    GenerationJob,
    JobResult,
    Loader,
    StepReport,
    UserMessage,
    describe_error,
    load_pipeline,
)
from .hires_section import HIRES_FIELDS
from .history_store import HistoryEntry
from .kernel_warmup import KernelWarmup
from .memory_question import ask_to_generate_anyway
from .model_import import ResourceImporter
from .upscale_control import ModelUpscaler
from .model_picker import DEMO_READY_TEXT, NO_MODEL_TEXT, ModelPicker
from .parameters_panel import ParametersPanel
from .presets import all_presets, make_preset, PresetError, snap_size, with_user_preset, without_user_preset
from .prompt_panel import PromptPanel
from .result_view import MessageBar, ResultItem, ResultView, qimage_to_pil
from .session_state import SessionState, load_session, save_session
from .settings import AppSettings, save_settings
from .wheel_guard import WheelGuard, guard_wheel

API_PREFIX = "API request · "  # progress of a job from the A1111 API
READY_TEXT = "Your images appear here. Write a prompt and press Generate (Ctrl+Enter)."
PREPARING_KERNELS_TEXT = "Preparing the CPU kernels (once: about a minute on the first start)…"
SIDE_MIN_WIDTH = 340
# fits a 13-inch MacBook Air's usable screen (1280x800 less the menu bar and the Dock) with room to spare
MINIMUM_SIZE = QSize(960, 600)
DEFAULT_SIZE = QSize(1200, 760)
# the request fields a history entry or an infotext brings back (batch settings stay the user's)
RESTORED_FIELDS = ("sampler", "schedule", "steps", "cfg_scale", "width", "height", "seed", "clip_skip", "strength", *HIRES_FIELDS)


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def progress_text(report: StepReport) -> str:
    text = f"Step {report.step}/{report.total}"
    if report.batch_count > 1:
        text += f" · run {report.batch_index + 1}/{report.batch_count}"
    if report.step == report.total:  # the sampler is done: the VAE decodes before the images arrive
        return text + " · decoding the image…"
    if report.seconds_left is not None:
        text += f" · {format_seconds(report.seconds_left)} left"
    return text


# A restored request and the infotext it came from (None when it came from the history) -> notes
RestoreHook = Callable[[GenerationRequest, Infotext | None], list[str]]


class MainWindow(QMainWindow):
    imageRecorded = Signal(object)  # HistoryEntry
    resourcesChanged = Signal(str)  # a library folder ("loras", "vae", ...) got a file from a drop
    settingsApplied = Signal(object)  # AppSettings, once the window uses them

    def __init__(
        self,
        settings: AppSettings,
        library: Path,
        settings_path: Path | None = None,
        *,
        loader: Loader = load_pipeline,
        demo_folder: Path | None = DEMO_FOLDER,
        session_path: Path | None = None,
    ):
        super().__init__()
        self.setWindowTitle("mlx-sd")
        self.settings = settings
        self.library = Path(library)
        self._settings_path = settings_path
        self._demo_folder = demo_folder
        self._session_path = session_path
        self._checkpoint_importer: Callable[[Path], None] | None = None
        self._job: GenerationJob | None = None  # the window's own last job
        self._shown: GenerationJob | None = None  # the job the worker runs: the window's own or the API's
        self._kernels_ready = True  # until prepare_cpu_kernels starts preparing them
        self._waiting: GenerationJob | None = None  # a run asked for while the kernels are prepared
        self._started = 0.0
        self._menus: dict[str, QMenu] = {}
        self.request_transforms: list[Callable[[GenerationRequest], GenerationRequest]] = []
        self.restore_hooks: list[RestoreHook] = []  # each gives notes (e.g. the LoRAs the library lacks)

        self.controller = GenerationController(self.library, loader, self)
        self.controller.status.connect(self._on_status)
        self.controller.started.connect(self._on_started)
        self.controller.progressed.connect(self._on_progress)
        self.controller.preview.connect(self._on_preview)
        self.controller.finished.connect(self._on_finished)
        self.controller.failed.connect(self._on_failed)
        self.controller.cancelled.connect(self._on_cancelled)
        self.controller.too_large.connect(self._on_too_large)
        self.ask_memory = ask_to_generate_anyway  # (window, TooLargeError) -> go ahead? (tests answer it)

        self.picker = ModelPicker(ModelLibrary(self.library, demo_folder))
        self.prompt_panel = PromptPanel()
        self.parameters = ParametersPanel()
        self.result_view = ResultView()
        self.message_bar = MessageBar()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.generate_button.setMinimumHeight(34)
        self.generate_button.setToolTip("Generate (Ctrl+Enter)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current step; nothing is saved (Esc)")
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setAccessibleName("Progress")
        self.progress_label = QLabel(" ")
        self.progress_label.setAccessibleName("Status")
        self._build_layout()
        self._build_menus()
        self._connect()
        self._set_busy(False)

        self.result_view.set_model_upscaler(ModelUpscaler(self.controller.call, self))
        self.result_view.upscale_tile = settings.upscale_tile
        self.refresh_upscalers()
        self.resourcesChanged.connect(lambda kind: self.refresh_upscalers() if kind == "upscalers" else None)
        self.resource_importer = ResourceImporter(self)
        self.resource_importer.copied.connect(self._on_resource_copied)
        self.resource_importer.failed.connect(lambda text: self.show_error("The file was not added to the library", text))
        self.drop_filter = DropFilter(self)
        self.drop_filter.allow_pickle = settings.allow_pickle
        self.drop_filter.dropped.connect(self.handle_drop)
        self.setAcceptDrops(True)
        self.installEventFilter(self.drop_filter)
        for child in self.findChildren(QWidget):  # widgets that take drops themselves (text boxes)
            if child.acceptDrops():
                child.installEventFilter(self.drop_filter)

        self.prompt_panel.set_affixes(settings.prompt_prefix, settings.prompt_suffix)
        self.result_view.output_format = settings.output_format
        self._refresh_presets()
        self.refresh_models(settings.default_model or None)
        self.parameters.low_memory.setChecked(settings.low_memory)
        self._set_tab_order()
        self.wheel_guard = WheelGuard(self)
        guard_wheel(self, self.wheel_guard)
        self.setMinimumSize(MINIMUM_SIZE)
        # the default size, shrunk to the screen's usable area (a 1024x640 screen must see the whole window)
        screen = QGuiApplication.primaryScreen()
        self.resize(DEFAULT_SIZE.boundedTo(screen.availableGeometry().size()) if screen else DEFAULT_SIZE)
        self.api = ApiService(self)
        self.api.apply(settings, self.library)

    # -- layout ---------------------------------------------------------------------------------

    def _build_layout(self) -> None:
        """The prompt, Generate, progress and the image never scroll away: only the parameters below
        Generate scroll. Messages take the image's room (the banner) or the status bar, so nothing
        moves the controls or resizes the window."""
        model_row = QHBoxLayout()
        model_label = QLabel("Model")
        model_label.setBuddy(self.picker.combo)
        model_row.addWidget(model_label)
        model_row.addWidget(self.picker, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button, 1)
        buttons.addWidget(self.cancel_button)
        self.parameters.add_advanced_row("Prompt prefix", self.prompt_panel.prefix_edit)
        self.parameters.add_advanced_row("Prompt suffix", self.prompt_panel.suffix_edit)
        self.parameters_scroll = QScrollArea()
        self.parameters_scroll.setWidget(self.parameters)
        self.parameters_scroll.setWidgetResizable(True)
        self.parameters_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.parameters_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.parameters_scroll.setMinimumHeight(120)
        # never narrower than its rows (the horizontal bar is off): at 1024x640 the side panel clipped them
        self.parameters_scroll.setMinimumWidth(
            self.parameters.minimumSizeHint().width() + self.parameters_scroll.verticalScrollBar().sizeHint().width()
        )
        # always there (empty when idle), one line high: a run starting or ending moves nothing
        self.progress.setFixedHeight(8)
        self.progress_label.setFixedHeight(self.progress_label.fontMetrics().height() + 2)
        side = QWidget()
        side.setMinimumWidth(SIDE_MIN_WIDTH)
        column = QVBoxLayout(side)
        column.setContentsMargins(8, 8, 4, 4)
        column.addLayout(model_row)
        column.addWidget(self.prompt_panel)
        column.addLayout(buttons)
        column.addWidget(self.progress)
        column.addWidget(self.progress_label)
        column.addWidget(self.parameters_scroll, 1)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.result_view, "Image")
        main = QWidget()
        main_layout = QVBoxLayout(main)
        main_layout.setContentsMargins(4, 8, 8, 4)
        main_layout.addWidget(self.tabs, 1)
        self.message_bar.float_over(self.tabs, lambda: self.tabs.tabBar().height())
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(side)
        self.splitter.addWidget(main)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setCollapsible(0, False)
        self.splitter.setCollapsible(1, False)
        self.splitter.setSizes([SIDE_MIN_WIDTH + 20, DEFAULT_SIZE.width() - SIDE_MIN_WIDTH - 20])
        self.setCentralWidget(self.splitter)
        self.statusBar()

    def _set_tab_order(self) -> None:
        """Tab goes model, prompt, negative prompt, Generate, Cancel, then the parameters."""
        chain = [self.picker.combo, self.prompt_panel.prompt_edit, self.prompt_panel.negative_edit,
                 self.generate_button, self.cancel_button, self.parameters.preset_combo]
        for first, second in zip(chain, chain[1:]):
            QWidget.setTabOrder(first, second)

    def _build_menus(self) -> None:
        def action(menu: str, text: str, slot: Callable[[], object], *keys: QKeySequence | str) -> QAction:
            item = QAction(text, self)
            if keys:
                item.setShortcuts([QKeySequence(k) for k in keys])
            item.triggered.connect(lambda _=False: slot())
            self.menu(menu).addAction(item)
            return item

        self.generate_action = action("File", "Generate", self.generate, "Ctrl+Return", "Ctrl+Enter")
        self.cancel_action = action("File", "Cancel Generation", self.cancel, "Esc")
        self.menu("File").addSeparator()
        self.save_action = action("File", "Save Image As…", self.result_view.save_current_as, QKeySequence.StandardKey.Save)
        self.reveal_action = action("File", "Show Image in Folder", self.result_view.reveal_current)
        self.menu("File").addSeparator()
        action("File", "Quit", self.close, QKeySequence.StandardKey.Quit)
        self.copy_action = action("Edit", "Copy Image", self.result_view.copy_current)
        self.paste_action = action("Edit", "Paste Image as Source", self.paste_from_clipboard, QKeySequence.StandardKey.Paste)
        action("Edit", "Clear Source Image", self.parameters.init_image.clear)
        self.menu("View")
        action("Models", "Import Checkpoint…", self.choose_checkpoint)

    def menu(self, title: str) -> QMenu:
        """The top-level menu called `title`, created on first use."""
        if title not in self._menus:
            self._menus[title] = self.menuBar().addMenu(title)
        return self._menus[title]

    def add_panel(self, title: str, widget: QWidget) -> QAction:
        """A tab beside the image (e.g. the history browser); returns its View menu action, which
        switches between that tab and the image."""
        index = self.tabs.addTab(widget, title)
        show = QAction(title, self)
        show.triggered.connect(lambda _=False: self.tabs.setCurrentIndex(0 if self.tabs.currentIndex() == index else index))
        self.menu("View").addAction(show)
        guard_wheel(widget, self.wheel_guard)
        return show

    def _connect(self) -> None:
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.prompt_panel.generateRequested.connect(self.generate)
        self.prompt_panel.imagePasted.connect(lambda image: self.set_init_image(qimage_to_pil(image), "the pasted image"))
        self.prompt_panel.affixesChanged.connect(self._save_affixes)
        self.parameters.init_image.pasteRequested.connect(self.paste_from_clipboard)
        self.parameters.presetSaveRequested.connect(self.save_preset)
        self.parameters.presetDeleteRequested.connect(self.delete_preset)
        self.parameters.low_memory.toggled.connect(self._set_low_memory)
        self.picker.modelChanged.connect(self._on_model_changed)
        self.result_view.error.connect(lambda title, detail: self.show_error(title, detail))
        self.result_view.info.connect(lambda text: self.statusBar().showMessage(text, 5000))

    # -- messages ---------------------------------------------------------------------------------

    def show_error(self, title: str, detail: str = "") -> None:
        self.message_bar.show_message(title, detail, "error")

    def show_info(self, title: str, detail: str = "", actions: list[tuple[str, Callable[[], None]]] | None = None) -> None:
        self.message_bar.show_message(title, detail, "info", actions)

    # -- models -------------------------------------------------------------------------------------

    def refresh_models(self, select: str | None = None) -> None:
        self.picker.refresh(select)

    def _on_model_changed(self, model: ModelInfo | None) -> None:
        if model is not None:
            self.parameters.set_native_size(model.native_size)
        if self.picker.has_own_models():
            self.result_view.canvas.set_placeholder(READY_TEXT)
        elif any(m.bundled for m in self.picker.models()):
            self.result_view.canvas.set_placeholder(f"{READY_TEXT} {DEMO_READY_TEXT}")
        else:
            self.result_view.canvas.set_placeholder(NO_MODEL_TEXT)
        self.generate_button.setEnabled(model is not None and not self.controller.busy)

    def refresh_upscalers(self) -> None:
        """List the library's upscaler models in the Upscale control and the Hires fix section."""
        models = {item.name: item.path for item in Library(self.library).items("upscalers")}
        self.result_view.set_upscalers(models)
        self.parameters.hires.set_upscalers(list(models))

    def set_checkpoint_importer(self, importer: Callable[[Path], None] | None) -> None:
        """Dropped and chosen checkpoints go to `importer(path)` (the model manager's import)."""
        self._checkpoint_importer = importer

    def import_checkpoint(self, path: Path) -> None:
        if self._checkpoint_importer is None:
            self.show_error(
                "Importing checkpoints is not available in this window",
                f"Convert {path.name} in a terminal with `mlx-sd convert \"{path}\" "
                f"\"{self.library / 'models' / path.stem}\"`, then it appears in the model list.",
            )
            return
        self._checkpoint_importer(path)

    def choose_checkpoint(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Import Checkpoint", str(Path.home()), CHECKPOINT_FILTER)
        if name:
            self.import_checkpoint(Path(name))

    # -- settings and presets ---------------------------------------------------------------------

    def apply_settings(self, settings: AppSettings) -> None:
        """New settings (from the settings dialog): prefix/suffix, output format, library folder."""
        self.settings = settings
        self.prompt_panel.set_affixes(settings.prompt_prefix, settings.prompt_suffix)
        self.result_view.output_format = settings.output_format
        self.result_view.upscale_tile = settings.upscale_tile
        self.parameters.low_memory.setChecked(settings.low_memory)
        self.drop_filter.allow_pickle = settings.allow_pickle
        self._refresh_presets()
        self.api.apply(settings, self.library)
        self.settingsApplied.emit(settings)

    def _set_low_memory(self, on: bool) -> None:
        if on != self.settings.low_memory:
            self.update_settings(dataclasses.replace(self.settings, low_memory=on))

    def update_settings(self, settings: AppSettings) -> None:
        """Apply settings changed outside the settings dialog and write them to the settings file."""
        self.apply_settings(settings)
        self._persist()

    def set_library(self, library: Path) -> None:
        """Use another library folder (after the settings dialog moved it)."""
        self.library = Path(library)
        self.controller.set_library(self.library)
        self.picker.set_library(ModelLibrary(self.library, self._demo_folder))
        self.refresh_upscalers()
        self.api.apply(self.settings, self.library)

    def release_library(self) -> None:
        """Stop any run and the API, and close the worker's history connection, before the library folder moves."""
        self.api.stop()
        self.controller.release_library()

    def _persist(self) -> None:
        if self._settings_path is not None:
            try:
                save_settings(self.settings, self._settings_path)
            except OSError as exc:
                self.show_error("The settings could not be saved", str(exc))

    def _save_affixes(self, prefix: str, suffix: str) -> None:
        if (prefix, suffix) != (self.settings.prompt_prefix, self.settings.prompt_suffix):
            self.settings = dataclasses.replace(self.settings, prompt_prefix=prefix, prompt_suffix=suffix)
            self._persist()

    def _refresh_presets(self) -> None:
        self.parameters.set_presets(all_presets(self.settings), [p.name for p in self.settings.user_presets])

    def save_preset(self, name: str) -> None:
        try:
            preset = make_preset(name, self.parameters.preset_values())
        except PresetError as exc:
            self.show_error("The preset was not saved", str(exc))
            return
        self.settings = with_user_preset(self.settings, preset)
        self._persist()
        self._refresh_presets()
        self.parameters.preset_combo.setCurrentText(preset.name)
        self.statusBar().showMessage(f"Saved the preset {preset.name}", 5000)

    def delete_preset(self, name: str) -> None:
        self.settings = without_user_preset(self.settings, name)
        self._persist()
        self._refresh_presets()

    # -- generating -------------------------------------------------------------------------------

    def build_request(self) -> GenerationRequest:
        """The request the current widgets describe (not yet validated)."""
        values = self.parameters.values()
        request = GenerationRequest(
            prompt=self.prompt_panel.full_prompt(),
            negative_prompt=self.prompt_panel.negative_prompt(),
            init_image=self.parameters.init_image.image(),
            low_memory=self.settings.low_memory,
            dash_lines_negative=self.settings.dash_lines_negative,
            **values,
        )
        for transform in self.request_transforms:
            request = transform(request)
        return request

    def prepare_cpu_kernels(self, warmup: KernelWarmup) -> None:
        """Prepare the CPU kernels in the background (a first start compiles them); a Generate
        meanwhile waits for them, saying so."""
        self._kernels_ready = False
        warmup.finished.connect(self._on_kernels_ready)
        self.statusBar().showMessage(PREPARING_KERNELS_TEXT)
        warmup.start()

    @Slot(str)
    def _on_kernels_ready(self, outcome: str) -> None:
        self._kernels_ready = True
        self.statusBar().showMessage(f"CPU kernels: {outcome}", 8000)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._start(waiting)

    def generate(self) -> GenerationJob | None:
        """Start a generation on the worker thread; returns the job, or None when it cannot start
        (a job asked for while the CPU kernels are prepared is returned and starts after them)."""
        if self.controller.busy or self._waiting is not None:
            return None
        model = self.picker.current()
        if model is None:
            self.show_error("There is no model to generate with", NO_MODEL_TEXT)
            return None
        request = self.build_request()
        try:
            request.validate()
        except RequestError as exc:
            message = describe_error(exc)
            self.show_error(message.title, message.detail)
            return None
        if self.message_bar.kind == "error":
            self.message_bar.dismiss()
        job = GenerationJob(
            request, model.path, model.name,
            device=self.settings.compute_device, preview_every=self.settings.preview_every,
            precision=self.settings.cpu_precision, allow_pickle=self.settings.allow_pickle,
        )
        self.progress.setRange(0, 0)  # busy until the first step reports
        self.tabs.setCurrentIndex(0)
        self._set_busy(True)
        if not self._kernels_ready:
            self._waiting = job
            self.progress_label.setText(PREPARING_KERNELS_TEXT)
            return job
        return self._start(job)

    def generate_with(self, change: Callable[[GenerationRequest], GenerationRequest]) -> GenerationJob | None:
        """Generate once with `change` applied after the other transforms (Vary, outpainting)."""
        self.request_transforms.append(change)
        try:
            return self.generate()
        finally:
            self.request_transforms.remove(change)

    def _start(self, job: GenerationJob) -> GenerationJob:
        self._job = self.controller.start(job)
        self._started = time.monotonic()
        self.progress_label.setText("Starting…")
        return self._job

    def cancel(self) -> None:
        if self._waiting is not None:
            self._waiting = None
            self._set_busy(False)
            self.progress_label.setText("Cancelled; nothing was saved")
        elif self.controller.busy:
            self.controller.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_label.setText("Cancelling…")

    def _set_busy(self, busy: bool) -> None:
        self.generate_button.setEnabled(not busy and self.picker.current() is not None)
        self.generate_action.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.cancel_action.setEnabled(busy)
        if not busy:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _current(self, job_id: int) -> bool:
        return self._shown is not None and self._shown.job_id == job_id

    def _own(self, job_id: int) -> bool:
        return self._job is not None and self._job.job_id == job_id

    def _prefix(self) -> str:
        """Before the progress text of the job shown: whether it came from the API."""
        return API_PREFIX if self._shown is not None and self._shown.outside else ""

    def _end_outside(self, text: str) -> None:
        """An API job ended: say so, and go idle unless the window's own job waits behind it."""
        if not self.controller.busy:
            self._set_busy(False)
        self.progress_label.setText(f"{API_PREFIX}{text}")

    @Slot(object)
    def _on_started(self, job: GenerationJob) -> None:
        self._shown = job
        self._started = time.monotonic()
        if job.outside:
            self.progress.setRange(0, 0)
            self.progress_label.setText(f"{API_PREFIX}starting…")

    @Slot(str)
    def _on_status(self, text: str) -> None:
        self.progress_label.setText(self._prefix() + text)

    @Slot(object)
    def _on_progress(self, report: StepReport) -> None:
        if not self._current(report.job_id):
            return
        self.progress.setRange(0, report.overall)
        self.progress.setValue(report.done)
        self.progress_label.setText(self._prefix() + progress_text(report))

    @Slot(int, QImage)
    def _on_preview(self, job_id: int, image: QImage) -> None:
        if self._current(job_id) and self._shown is not None:
            self.result_view.show_preview(image, QSize(self._shown.request.width, self._shown.request.height))

    @Slot(object)
    def _on_finished(self, outcome: JobResult) -> None:
        if not self._current(outcome.job.job_id):
            return
        result = outcome.result
        paths = [entry.image_path for entry in outcome.entries]
        items = [
            ResultItem(image, seed, infotext, paths[i] if i < len(paths) else None)
            for i, (image, seed, infotext) in enumerate(zip(result.images, result.seeds, result.infotexts))
        ]
        self.result_view.set_results(items)
        seconds = time.monotonic() - self._started
        count = len(items)
        done = f"{count} image{'s' if count != 1 else ''} in {format_seconds(seconds)}"
        if self._own(outcome.job.job_id):
            if result.seeds:
                self.parameters.seed.set_last_seed(result.seeds[0])
            self._set_busy(False)
            self.progress_label.setText(done)
        else:
            self._end_outside(done)
        if outcome.record_error is not None:
            self.show_error(outcome.record_error.title, outcome.record_error.detail)
        elif result.notices:  # LoRA keys matching no layer, two library files of one name
            self.statusBar().showMessage("; ".join(result.notices), 15000)
        for entry in outcome.entries:
            self.imageRecorded.emit(entry)

    @Slot(int, object)
    def _on_failed(self, job_id: int, message: UserMessage) -> None:
        if not self._own(job_id):
            if self._current(job_id):  # the API's client hears why; the window only notes it
                self.result_view.end_preview()
                self._end_outside(f"failed: {message.title}")
            return
        self._set_busy(False)
        self.result_view.end_preview()
        self.progress_label.setText("Failed")
        self.show_error(message.title, message.detail)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        if not self._own(job_id):
            if self._current(job_id):
                self.result_view.end_preview()
                self._end_outside("interrupted")
            return
        self._set_busy(False)
        self.result_view.end_preview()
        self.progress_label.setText("Cancelled; nothing was saved")

    @Slot(int, object)
    def _on_too_large(self, job_id: int, error: Exception) -> None:
        """The run's memory estimate exceeds the machine's and nothing ran: ask, and run it anyway if told."""
        if not self._own(job_id) or self._job is None:
            return
        self._set_busy(False)
        self.progress_label.setText("Not started: it needs more memory than the machine has")
        if self.ask_memory(self, error):
            self.progress.setRange(0, 0)
            self._set_busy(True)
            self._start(dataclasses.replace(self._job, check_memory=False))

    # -- sources and restoring --------------------------------------------------------------------

    def set_init_image(self, image: Image.Image, name: str = "the image") -> None:
        """Start from `image`; the size follows its shape at the model's native resolution."""
        self.parameters.init_image.set_image(image)
        width, height = snap_size(image.width / image.height, self.parameters.native_size())
        self.parameters.set_size(width, height)
        self.statusBar().showMessage(f"Starting from {name} ({image.width} x {image.height})", 5000)

    def use_image_file_as_source(self, path: str | Path) -> None:
        item = classify_file(Path(path), self.settings.allow_pickle)
        if item.image is None:
            self.show_error("The image cannot be used as a source", item.message)
            return
        self.set_init_image(item.image, item.name)

    def restore_parameters(self, infotext: str | Infotext, source: str = "the image") -> list[str]:
        """Fill the window from an A1111 infotext (or one parsed already, as drops are on their worker);
        returns notes on what could not be restored."""
        info = parse_infotext(infotext) if isinstance(infotext, str) else infotext
        request = request_from_infotext(info, self.build_request())
        notes = self.reuse_request(request, info.params.get("Model"), info)
        detail = "; ".join(notes)
        self.show_info(f"Parameters restored from {source}", detail[:1].upper() + detail[1:] + ("." if notes else ""))
        return notes

    def reuse_request(self, request: GenerationRequest, model: str | None = None, info: Infotext | None = None) -> list[str]:
        """Put a request's prompts and parameters into the window (and select its model when present);
        `info` is the infotext it was read from, if any. Returns notes on what could not be restored."""
        notes: list[str] = []
        if model:
            found = next((m for m in self.picker.models() if m.name == model), None) or self.picker.find_by_source(model)
            if found is None:
                notes.append(f"the model {model!r} is not installed, kept {self.picker.current().name if self.picker.current() else 'none'}")
            else:
                self.picker.select(found.name)
        self.prompt_panel.set_prompts(request.prompt, request.negative_prompt)
        notes += self.parameters.set_values({key: getattr(request, key) for key in RESTORED_FIELDS})
        for hook in self.restore_hooks:
            notes += hook(request, info)
        return notes

    def reuse_seed(self, seed: int) -> None:
        self.parameters.seed.set_seed(seed)

    def show_history_entry(self, entry: HistoryEntry | None) -> None:
        """Show a history image large (not while a run shows its preview)."""
        if entry is None or self.controller.busy:
            return
        try:
            with Image.open(entry.image_path) as image:
                image.load()
        except OSError as exc:
            self.statusBar().showMessage(f"The image cannot be shown: {exc}", 5000)
            return
        g = entry.generation
        self.result_view.set_results([ResultItem(image, g.seed, g.infotext, entry.image_path)])

    # -- the session ---------------------------------------------------------------------------------

    def session_state(self) -> SessionState:
        return SessionState(
            prompt=self.prompt_panel.prompt(),
            negative_prompt=self.prompt_panel.negative_prompt(),
            params=self.parameters.values(),
            preset=self.parameters.preset_combo.currentText(),
            advanced_open=self.parameters.advanced.is_expanded(),
            geometry=_encode(self.saveGeometry()),
            splitters={s.objectName(): _encode(s.saveState()) for s in self._named_splitters()},
        )

    def restore_session(self) -> None:
        """Bring back what `session_state` saved on the last close (nothing without a session file)."""
        if self._session_path is None:
            return
        state = load_session(self._session_path)
        self.prompt_panel.set_prompts(state.prompt, state.negative_prompt)
        try:
            self.parameters.set_values(state.params)
        except (TypeError, ValueError):  # a hand-edited session file: the rest keeps its defaults
            self.statusBar().showMessage("Some of the last session's parameters could not be restored", 5000)
        self.parameters.show_preset(state.preset)
        self.parameters.advanced.set_expanded(state.advanced_open)
        if state.geometry:
            self.restoreGeometry(_decode(state.geometry))
        for splitter in self._named_splitters():
            saved = state.splitters.get(splitter.objectName())
            if isinstance(saved, str):
                splitter.restoreState(_decode(saved))

    def _named_splitters(self) -> list[QSplitter]:
        """The panel dividers whose positions are kept: every splitter with an object name."""
        return [s for s in self.findChildren(QSplitter) if s.objectName()]

    def _save_session(self) -> None:
        if self._session_path is not None:
            try:
                save_session(self.session_state(), self._session_path)
            except OSError:
                pass  # closing: nowhere left to say it; the next start uses the defaults

    # -- drops and paste ----------------------------------------------------------------------------

    @Slot(object)
    def handle_drop(self, item: DropItem) -> None:
        if item.kind is DropKind.IMAGE and item.image is not None:
            self.set_init_image(item.image, item.name)
        elif item.kind is DropKind.PARAMETERS and item.image is not None and item.parameters is not None:
            image, infotext, name = item.image, item.parameters, item.name
            self.show_info(
                f"{name} carries generation parameters",
                "Restore its prompt and settings, or start from the image itself?",
                [
                    ("Restore Parameters", lambda: self.restore_parameters(infotext, name)),
                    ("Use as Source Image", lambda: self.set_init_image(image, name)),
                ],
            )
        elif item.kind is DropKind.CHECKPOINT and item.path is not None:
            self.import_checkpoint(item.path)
        elif item.kind is DropKind.RESOURCE and item.path is not None:
            self.statusBar().showMessage(f"Adding {item.name} to the library…")
            self.resource_importer.start(item.path, item.resource, Library(self.library).folder(item.resource))
        else:
            self.show_error("This cannot be used here", item.message)
            return
        if item.message:
            self.statusBar().showMessage(item.message, 5000)

    @Slot(str, object, bool)
    def _on_resource_copied(self, kind: str, path: Path, copied: bool) -> None:
        what = LABELS[kind]
        if copied:
            self.statusBar().showMessage(f"Added the {what} {path.stem} to the library ({kind}/{path.name})", 8000)
        else:
            self.statusBar().showMessage(f"The {what} {path.stem} is in the library already", 8000)
        self.resourcesChanged.emit(kind)

    def paste_from_clipboard(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None or not (mime.hasImage() or mime.hasUrls()):
            self.show_error("There is no image on the clipboard", "Copy an image or an image file, then paste again.")
            return
        self.drop_filter.classify(mime)  # read on a worker thread; handle_drop gets the result

    # -- closing --------------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        self._save_session()
        self.controller.cancel()  # so an API job queued behind the window's own one is not kept waiting
        if self.result_view.model_upscaler is not None:
            self.result_view.model_upscaler.cancel()  # it runs on the generation thread: stop it at its next tile
        self.api.stop()  # before the worker ends: the API's running job stops at its next step
        self.controller.shutdown()
        self.resource_importer.wait()
        super().closeEvent(event)


def _encode(data: QByteArray) -> str:
    return bytes(data.toBase64().data()).decode("ascii")


def _decode(text: str) -> QByteArray:
    return QByteArray.fromBase64(text.encode("ascii"))
