"""`eci-tray`: the developer's view of the agent (lock state, status), via the control API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from PySide6 import QtCore, QtGui, QtWidgets

from gui.control_client import DEFAULT_CONTROL_SOCKET, AgentUnavailable, ControlClient
from gui.state import Level, TrayView, view_of

COLORS = {
    Level.ENFORCING: "#2e7d32",
    Level.OFF: "#9e9e9e",
    Level.ERROR: "#ef6c00",
    Level.AUDIT: "#f9a825",
    Level.UNREACHABLE: "#c62828",
}


class StatusSource(Protocol):
    def status(self) -> dict[str, object]: ...


def icon_for(level: Level) -> QtGui.QIcon:
    pixmap = QtGui.QPixmap(32, 32)
    pixmap.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pixmap)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setBrush(QtGui.QColor(COLORS[level]))
    painter.setPen(QtCore.Qt.PenStyle.NoPen)
    painter.drawEllipse(2, 2, 28, 28)
    painter.end()
    return QtGui.QIcon(pixmap)


class Tray(QtCore.QObject):
    """Polls the agent and shows what it says; degrades to a window without a system tray."""

    changed = QtCore.Signal(object)

    def __init__(self, source: StatusSource, interval_ms: int = 2000) -> None:
        super().__init__()
        self.source = source
        self.view = view_of(None, "not asked yet")
        self.icon = QtWidgets.QSystemTrayIcon()
        self.menu = QtWidgets.QMenu()
        self.title_action = self.menu.addAction("")
        self.title_action.setEnabled(False)
        self.menu.addSeparator()
        self.menu.addAction("Quit", QtWidgets.QApplication.quit)
        self.icon.setContextMenu(self.menu)
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(interval_ms)
        self.refresh()
        self.icon.show()

    def refresh(self) -> None:
        try:
            view: TrayView = view_of(self.source.status())
        except AgentUnavailable as err:
            view = view_of(None, str(err))
        if view == self.view:
            return
        self.view = view
        self.icon.setIcon(icon_for(view.level))
        self.icon.setToolTip(view.tooltip)
        self.title_action.setText(view.title)
        self.changed.emit(view)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eci-tray")
    parser.add_argument("--control", default=DEFAULT_CONTROL_SOCKET)
    args = parser.parse_args(argv)
    app = QtWidgets.QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    tray = Tray(ControlClient(args.control))
    if not QtWidgets.QSystemTrayIcon.isSystemTrayAvailable():
        print(f"eci-tray: no system tray here; {tray.view.tooltip}", file=sys.stderr)
    return app.exec()
