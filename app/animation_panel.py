"""The "Animation" tab: `mlx-sd animate` in the app.

From and To prompts (typed, or the Blend tab's first two), frames, frames per second, the blend
(composable weights or embedding interpolation) and an optional second seed; the rest of the request
(model, size, steps, sampler, seed, negative prompt) comes from the window's left panel. Animate runs
the frames on the generation thread (app.animation_runner) with progress per frame and step; each
frame shows in the strip as it arrives, and the viewer plays them in a loop or scrubs through them.
Export writes the frames as numbered PNGs, each with its own infotext, plus an animated WebP or GIF
and an MP4 when imageio-ffmpeg is installed, to a chosen folder (off the UI thread).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QRegularExpression, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QIcon, QPixmap, QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mlx_sd.animate import MAX_FRAMES, Animation, Frame
from mlx_sd.animation_files import ANIMATION_FORMATS, MP4_MISSING, save_animations
from mlx_sd.output_files import save_numbered
from mlx_sd.request import RequestError

from .animation_runner import AnimationJob, AnimationRunner
from .blend_panel import BLEND_LABELS, BlendPanel
from .generation_worker import UserMessage, describe_error
from .result_view import pil_to_qimage

THUMBNAIL = 64
DEFAULT_FRAMES = 24
DEFAULT_FPS = 8.0


class FrameViewer(QLabel):
    """One frame, scaled to fill the room it has (a 64 px demo frame too, as the Image tab shows it)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(120, 120)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self._pixmap: QPixmap | None = None

    def show_pixmap(self, pixmap: QPixmap | None) -> None:
        self._pixmap = pixmap
        self._fit()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        if self._pixmap is None:
            self.clear()
            return
        self.setPixmap(self._pixmap.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))


class AnimationPanel(QWidget):
    exported = Signal(object)  # list[Path] written, or a UserMessage (emitted from the export thread)

    def __init__(self, window, blend_panel: BlendPanel | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self._window = window
        self._blend_panel = blend_panel
        self.runner = AnimationRunner(window.controller, self)
        self.frames: list[Frame] = []
        self._pixmaps: list[QPixmap] = []
        self._expected = 0
        self._seed = 0  # the running or last animation's, for the exported files' names
        self._job: AnimationJob | None = None

        self.from_edit = QLineEdit(placeholderText="the first frame's prompt, e.g. a zombie")
        self.to_edit = QLineEdit(placeholderText="the last frame's prompt, e.g. a clown")
        self.from_blend_button = QPushButton("Use the Blend Tab's Prompts")
        self.from_blend_button.setToolTip("From and To become the Blend tab's first two prompts, and its blend mode")
        self.frames_spin = QSpinBox(minimum=2, maximum=MAX_FRAMES, value=DEFAULT_FRAMES)
        self.fps_spin = QDoubleSpinBox(minimum=1.0, maximum=100.0, value=DEFAULT_FPS, decimals=1)
        self.mode_combo = QComboBox()
        for name, label in BLEND_LABELS.items():
            self.mode_combo.addItem(label, name)
        self.seed_to_check = QCheckBox("Move the noise to seed")
        # a line edit, as the window's seed: seeds go past a QSpinBox's int range
        self.seed_to_edit = QLineEdit("0")
        self.seed_to_edit.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{1,20}")))
        self.seed_to_edit.setMaximumWidth(self.fontMetrics().horizontalAdvance("0" * 12) + 12)
        self.seed_to_edit.setEnabled(False)
        self.animate_button = QPushButton("Animate")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(8)
        self.status = QLabel("Seed, size, steps, sampler and negative prompt come from the left panel.")
        self.status.setWordWrap(True)
        self.viewer = FrameViewer()
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.scrubber = QSlider(Qt.Orientation.Horizontal)
        self.position_label = QLabel("0/0")
        self.strip = QListWidget()
        self.strip.setViewMode(QListView.ViewMode.IconMode)
        self.strip.setFlow(QListView.Flow.LeftToRight)
        self.strip.setWrapping(False)
        self.strip.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.strip.setFixedHeight(THUMBNAIL + 2 * self.fontMetrics().height() + 12)
        self.strip.setMovement(QListView.Movement.Static)
        self.format_combo = QComboBox()
        for name in ANIMATION_FORMATS:
            self.format_combo.addItem({"webp": "WebP", "gif": "GIF"}[name], name)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the frames (PNG with their parameters) and the animation to a folder")
        self._timer = QTimer(self)
        for widget, name in ((self.from_edit, "From prompt"), (self.to_edit, "To prompt"), (self.frames_spin, "Frames"),
                             (self.fps_spin, "Frames per second"), (self.scrubber, "Frame"), (self.strip, "Frames strip")):
            widget.setAccessibleName(name)
        self._build_layout()
        self._connect()
        self._set_running(False)
        window.installEventFilter(self)  # closing the window stops a running animation first

    # -- layout -----------------------------------------------------------------------------------

    def _build_layout(self) -> None:
        form = QGridLayout()
        form.addWidget(QLabel("From"), 0, 0)
        form.addWidget(self.from_edit, 0, 1, 1, 3)
        form.addWidget(QLabel("To"), 1, 0)
        form.addWidget(self.to_edit, 1, 1, 1, 2)
        form.addWidget(self.from_blend_button, 1, 3)
        form.setColumnStretch(1, 1)
        options = QHBoxLayout()
        for label, widget in (("Frames", self.frames_spin), ("FPS", self.fps_spin), ("Blend", self.mode_combo)):
            caption = QLabel(label)
            caption.setBuddy(widget)
            options.addWidget(caption)
            options.addWidget(widget)
        options.addSpacing(8)
        options.addWidget(self.seed_to_check)
        options.addWidget(self.seed_to_edit)
        options.addStretch(1)
        run = QHBoxLayout()
        run.addWidget(self.animate_button)
        run.addWidget(self.cancel_button)
        run.addWidget(self.status, 1)
        player = QHBoxLayout()
        player.addWidget(self.play_button)
        player.addWidget(self.scrubber, 1)
        player.addWidget(self.position_label)
        export = QHBoxLayout()
        export.addStretch(1)
        export.addWidget(QLabel("Animation as"))
        export.addWidget(self.format_combo)
        export.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(form)
        layout.addLayout(options)
        layout.addLayout(run)
        layout.addWidget(self.progress)
        layout.addWidget(self.viewer, 1)
        layout.addLayout(player)
        layout.addWidget(self.strip)
        layout.addLayout(export)

    def _connect(self) -> None:
        self.animate_button.clicked.connect(self.animate)
        self.cancel_button.clicked.connect(self.cancel)
        self.from_blend_button.clicked.connect(self.use_blend_prompts)
        self.seed_to_check.toggled.connect(self.seed_to_edit.setEnabled)
        self.play_button.toggled.connect(self._play)
        self.fps_spin.valueChanged.connect(lambda fps: self._timer.setInterval(round(1000 / fps)))
        self._timer.setInterval(round(1000 / DEFAULT_FPS))
        self._timer.timeout.connect(self._next_frame)
        self.scrubber.valueChanged.connect(self.show_frame)
        self.strip.currentRowChanged.connect(lambda row: row >= 0 and self.scrubber.setValue(row))
        self.export_button.clicked.connect(self.choose_export_folder)
        self.exported.connect(self._on_exported)
        self.runner.started.connect(self._on_started)
        self.runner.progressed.connect(self._on_progress)
        self.runner.frameReady.connect(self._on_frame)
        self.runner.finished.connect(self._on_finished)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.tooLarge.connect(self._on_too_large)
        self.runner.failed.connect(self._on_failed)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self._window and event.type() == QEvent.Type.Close:
            self.runner.cancel()  # the generation thread ends only once the animation has stopped
        return False

    # -- running ----------------------------------------------------------------------------------

    def animation(self) -> Animation:
        seed_to = int(self.seed_to_edit.text() or 0) if self.seed_to_check.isChecked() else None
        return Animation(
            self.from_edit.text().strip(), self.to_edit.text().strip(), self.frames_spin.value(), seed_to,
            self.mode_combo.currentData(),
        )

    def use_blend_prompts(self) -> None:
        """From and To from the Blend tab's first two prompts (and its mode)."""
        texts = [] if self._blend_panel is None else [r.prompt_edit.text().strip() for r in self._blend_panel.rows]
        texts = [text for text in texts if text]
        if len(texts) < 2:
            self._window.show_error("The Blend tab has fewer than two prompts", "Write two prompts there, or type From and To here.")
            return
        self.from_edit.setText(texts[0])
        self.to_edit.setText(texts[1])
        self.mode_combo.setCurrentIndex(self.mode_combo.findData(self._blend_panel.mode_combo.currentData()))

    def animate(self) -> AnimationJob | None:
        """Start the frames on the generation thread; returns the job, or None when it cannot start."""
        if self.runner.running:
            return None
        model = self._window.picker.current()
        if model is None:
            self._window.show_error("There is no model to animate with", "Import or download a model first.")
            return None
        animation = self.animation()
        if not animation.from_prompt or not animation.to_prompt:
            self._window.show_error("Animating needs two prompts", "Write the first frame's prompt in From and the last one's in To.")
            return None
        # the left panel's request, but the frames' own prompts: the Blend tab's transform does not apply
        base = dataclasses.replace(self._window.build_request(), prompt="", batch_size=1, batch_count=1)
        try:
            animation.validate()
            dataclasses.replace(base, prompt=animation.from_prompt).validate()
        except RequestError as exc:
            message = describe_error(exc)
            self._window.show_error(message.title, message.detail)
            return None
        settings = self._window.settings
        job = AnimationJob(base, animation, model.path, model.name, settings.compute_device, settings.cpu_precision)
        self._start(job)
        return job

    def _start(self, job: AnimationJob) -> None:
        self._job = job
        self._play(False)
        self.frames, self._pixmaps, self._expected = [], [], job.animation.frames
        self.strip.clear()
        self.viewer.show_pixmap(None)
        self._update_scrubber()
        self.progress.setRange(0, 0)
        self._say("Starting…")
        self._set_running(True)
        self.runner.start(job)

    def cancel(self) -> None:
        if self.runner.running:
            self.runner.cancel()
            self.cancel_button.setEnabled(False)
            self._say("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.animate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.export_button.setEnabled(not running and bool(self.frames))
        if not running:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _say(self, text: str) -> None:
        """In the tab, and under the window's Generate unless the window's own job runs (the worker's
        messages about this run, "Loading the model…", appear there too)."""
        self.status.setText(text)
        if not self._window.controller.busy:  # its first clause: the label there is one short line
            short = re.split(r"[.;]", text, maxsplit=1)[0]
            self._window.progress_label.setText(f"Animation: {short[:1].lower()}{short[1:]}")

    @Slot(int, int)
    def _on_started(self, frames: int, seed: int) -> None:
        self._expected, self._seed = frames, seed

    @Slot(int, int, int)
    def _on_progress(self, index: int, step: int, steps: int) -> None:
        self.progress.setRange(0, self._expected * steps)
        self.progress.setValue(index * steps + step)
        self._say(f"Frame {index + 1}/{self._expected} · step {step}/{steps}")

    @Slot(object)
    def _on_frame(self, frame: Frame) -> None:
        pixmap = QPixmap.fromImage(pil_to_qimage(frame.image))
        self.frames.append(frame)
        self._pixmaps.append(pixmap)
        item = QListWidgetItem(QIcon(pixmap), str(frame.index + 1))
        item.setToolTip(frame.infotext)
        self.strip.addItem(item)
        self._update_scrubber()
        if not self.play_button.isChecked():
            self.scrubber.setValue(len(self.frames) - 1)  # follow the newest frame

    @Slot()
    def _on_finished(self) -> None:
        self._set_running(False)
        self._say(f"{len(self.frames)} frames. Play them, or export them with the animation.")
        self.play_button.setChecked(True)

    @Slot()
    def _on_cancelled(self) -> None:
        self._set_running(False)
        self._say(f"Cancelled after {len(self.frames)} of {self._expected} frames; those can be exported.")

    @Slot(object)
    def _on_too_large(self, error) -> None:
        self._set_running(False)
        self._say("Not started: it needs more memory than the machine has")
        if self._job is not None and self._window.ask_memory(self._window, error):
            self._start(dataclasses.replace(self._job, check_memory=False))

    @Slot(object)
    def _on_failed(self, message: UserMessage) -> None:
        self._set_running(False)
        self._say("Failed")
        self._window.show_error(message.title, message.detail)

    # -- the viewer -------------------------------------------------------------------------------

    def _update_scrubber(self) -> None:
        self.scrubber.setRange(0, max(0, len(self.frames) - 1))
        self.play_button.setEnabled(len(self.frames) > 1)
        self._show_position(self.scrubber.value())

    def _show_position(self, index: int) -> None:
        self.position_label.setText(f"{index + 1 if self.frames else 0}/{len(self.frames)}")

    @Slot(int)
    def show_frame(self, index: int) -> None:
        if 0 <= index < len(self._pixmaps):
            self.viewer.show_pixmap(self._pixmaps[index])
            self.strip.setCurrentRow(index)
        self._show_position(index)

    def _play(self, playing: bool) -> None:
        self.play_button.setChecked(playing)
        self.play_button.setText("Pause" if playing else "Play")
        if playing and len(self.frames) > 1:
            self._timer.start()
        else:
            self._timer.stop()

    def _next_frame(self) -> None:
        """The next frame, back to the first after the last: a loop, as the exported animation."""
        self.scrubber.setValue((self.scrubber.value() + 1) % max(1, len(self.frames)))

    # -- export -----------------------------------------------------------------------------------

    def choose_export_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the Animation to a Folder")
        if folder:
            self.export_to(Path(folder))

    def export_to(self, folder: Path) -> None:
        """Write the frames and the animation under `folder` on another thread; `exported` reports."""
        if not self.frames:
            return
        frames, fps, format, seed = list(self.frames), self.fps_spin.value(), self.format_combo.currentData(), self._seed
        self.export_button.setEnabled(False)
        self.status.setText(f"Exporting {len(frames)} frames to {folder}…")

        def write() -> None:
            outcome: list[Path] | UserMessage
            try:
                outcome = [save_numbered(f.image, folder, seed, f.infotext) for f in frames]
                outcome += save_animations([f.image for f in frames], folder, seed, fps, format)
            except Exception as exc:  # a full disk, a folder that cannot be written: a message, not a crash
                outcome = describe_error(exc)
            try:
                self.exported.emit(outcome)
            except RuntimeError:  # the window closed meanwhile: the files are complete, no one to tell
                pass

        # not a daemon: quitting waits for the files to be complete rather than leave one half-written
        threading.Thread(target=write, name="animation export").start()

    @Slot(object)
    def _on_exported(self, outcome: list[Path] | UserMessage) -> None:
        self.export_button.setEnabled(not self.runner.running and bool(self.frames))
        if isinstance(outcome, UserMessage):
            self.status.setText("Export failed")
            self._window.show_error(outcome.title, outcome.detail)
            return
        animations = [p.name for p in outcome if p.suffix != ".png"]
        note = "" if any(p.suffix == ".mp4" for p in outcome) else f" ({MP4_MISSING})"
        self.status.setText(f"Exported {len(outcome) - len(animations)} frames and {', '.join(animations)} to {outcome[0].parent}{note}")


def install_animation_panel(window, blend_panel: BlendPanel | None = None) -> AnimationPanel:
    """Add the Animation tab to the main window (View > Animation)."""
    panel = AnimationPanel(window, blend_panel)
    window.add_panel("Animation", panel)
    return panel
