"""Spin boxes, combo boxes and sliders take the mouse wheel only when focused: scrolling a panel with
the pointer passing over CFG scale must scroll the panel, not turn CFG down to 0."""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractScrollArea, QAbstractSpinBox, QComboBox, QSlider, QWidget

GUARDED = (QAbstractSpinBox, QComboBox, QSlider)  # not QScrollBar: it is how a scroll area scrolls


class WheelGuard(QObject):
    """An event filter that hands an unfocused control's wheel event to its parent 's scroll area."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() != QEvent.Type.Wheel or not isinstance(watched, QWidget) or watched.hasFocus():
            return False
        # a sent (not spontaneous) wheel event does not climb to parents, so hand it to the scroll area
        area = watched.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:
            QCoreApplication.sendEvent(area.viewport(), event)
        return True


def guard_wheel(root: QWidget, guard: WheelGuard) -> None:
    """Install `guard` on every value control under `root`; the wheel no longer focuses them either."""
    for widget in root.findChildren(QWidget):
        if isinstance(widget, GUARDED) and widget.property("wheelGuarded") is not True:
            widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            widget.installEventFilter(guard)
            widget.setProperty("wheelGuarded", True)
