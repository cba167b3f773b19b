"""Prompt and negative prompt (multi-line; Ctrl+Enter, Cmd+Enter on a Mac, generates), and the
prefix and suffix that are added to every prompt (their boxes are laid out by the window, under
Advanced)."""

from __future__ import annotations

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QImage, QKeyEvent
from PySide6.QtWidgets import QLabel, QLineEdit, QPlainTextEdit, QVBoxLayout, QWidget

SEPARATOR = ", "


def compose_prompt(prefix: str, prompt: str, suffix: str) -> str:
    """prefix, prompt, suffix joined by commas, leaving out the empty ones."""
    parts = [part.strip().strip(",").strip() for part in (prefix, prompt, suffix)]
    return SEPARATOR.join(part for part in parts if part)


def strip_affixes(prompt: str, prefix: str, suffix: str) -> str:
    """Undo `compose_prompt` on a restored prompt, so restoring does not add the prefix twice."""
    text = prompt.strip()
    prefix, suffix = prefix.strip().strip(",").strip(), suffix.strip().strip(",").strip()
    if prefix and text.startswith(prefix):
        text = text[len(prefix):].lstrip().removeprefix(",").lstrip()
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)].rstrip().removesuffix(",").rstrip()
    return text


class PromptEdit(QPlainTextEdit):
    """A multi-line prompt box: Ctrl/Cmd+Enter submits; a pasted image is passed on, not inserted."""

    submitted = Signal()
    imagePasted = Signal(QImage)

    def __init__(self, placeholder: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setPlaceholderText(placeholder)
        self.setTabChangesFocus(True)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # Qt reports the Mac's Cmd key as ControlModifier
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return source.hasImage() or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        if source.hasImage() and not source.hasText():
            image = source.imageData()
            if isinstance(image, QImage) and not image.isNull():
                self.imagePasted.emit(image)
                return
        super().insertFromMimeData(source)

    def text(self) -> str:
        return self.toPlainText()


class PromptPanel(QWidget):
    generateRequested = Signal()
    imagePasted = Signal(QImage)
    affixesChanged = Signal(str, str)  # prefix, suffix

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.prompt_edit = PromptEdit("Describe the image, e.g. a lighthouse at dusk, oil painting")
        self.negative_edit = PromptEdit("What to avoid, e.g. blurry, text, watermark")
        self.prompt_edit.setAccessibleName("Prompt")
        self.negative_edit.setAccessibleName("Negative prompt")
        self.prompt_edit.setMinimumHeight(60)
        self.prompt_edit.setMaximumHeight(130)
        self.negative_edit.setMinimumHeight(40)
        self.negative_edit.setMaximumHeight(70)
        self.prefix_edit = QLineEdit()
        self.prefix_edit.setPlaceholderText("added before every prompt")
        self.suffix_edit = QLineEdit()
        self.suffix_edit.setPlaceholderText("added after every prompt")
        for edit in (self.prompt_edit, self.negative_edit):
            edit.submitted.connect(self.generateRequested)
            edit.imagePasted.connect(self.imagePasted)
        for line in (self.prefix_edit, self.suffix_edit):
            line.editingFinished.connect(lambda: self.affixesChanged.emit(self.prefix(), self.suffix()))

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for label, edit, stretch in (("&Prompt", self.prompt_edit, 2), ("&Negative prompt", self.negative_edit, 1)):
            title = QLabel(label)
            title.setBuddy(edit)
            layout.addWidget(title)
            layout.addWidget(edit, stretch)

    def prompt(self) -> str:
        return self.prompt_edit.text()

    def negative_prompt(self) -> str:
        return self.negative_edit.text()

    def prefix(self) -> str:
        return self.prefix_edit.text()

    def suffix(self) -> str:
        return self.suffix_edit.text()

    def full_prompt(self) -> str:
        """The prompt as generated: with the prefix and suffix."""
        return compose_prompt(self.prefix(), self.prompt(), self.suffix())

    def set_prompts(self, prompt: str, negative_prompt: str) -> None:
        """Show a restored prompt without the prefix and suffix that generation adds again."""
        self.prompt_edit.setPlainText(strip_affixes(prompt, self.prefix(), self.suffix()))
        self.negative_edit.setPlainText(negative_prompt)

    def set_affixes(self, prefix: str, suffix: str) -> None:
        self.prefix_edit.setText(prefix)
        self.suffix_edit.setText(suffix)
