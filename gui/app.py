"""`eci-tray`: the developer's view of the agent, through its control API only.

A QSystemTrayIcon whose colour and tooltip say the mode (audit mode loudly), and a context menu
with the ECI switch (only while the settings are unlocked), re-pull prompts, the blocked
requests window and the features window. A QTimer polls; every call to the agent runs in a
worker (`gui.runner`), so a slow or hung agent never freezes the UI. What is shown and when to
notify is decided in `gui.state` (no Qt).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from PySide6 import QtCore, QtGui, QtWidgets

from gui import state as st
from gui.control_client import DEFAULT_CONTROL_SOCKET, AgentUnavailable, ControlClient
from gui.qtcompat import emit
from gui.runner import PoolRunner, Runner
from gui.state import Entry, Level, Notice, TrayView, view_of
from gui.windows.blocked import BlockedWindow
from gui.windows.features import FeaturesWindow

COLORS = {
    Level.ENFORCING: "#2e7d32",
    Level.OFF: "#9e9e9e",
    Level.ERROR: "#ef6c00",
    Level.AUDIT: "#f9a825",
    Level.UNREACHABLE: "#c62828",
}
NOTICE_MS = 8000


class ControlSource(Protocol):
    """What the tray asks the agent (`gui.control_client.ControlClient`, or a test's stand-in).
    Each may raise AgentUnavailable; the actions may also raise ActionFailed."""

    def status(self) -> dict[str, Any]: ...

    def events(
        self,
        after: int | None = None,
        limit: int = 100,
        kinds: Sequence[str] = (),
        newest: bool = False,
    ) -> dict[str, Any]: ...

    def features(self) -> dict[str, Any]: ...

    def set_eci(self, enabled: bool | None) -> dict[str, Any]: ...

    def repull(self, image: str) -> dict[str, Any]: ...


class Dialogs(Protocol):
    def confirm(self, title: str, text: str) -> bool: ...

    def inform(self, title: str, text: str) -> None: ...

    def warn(self, title: str, text: str) -> None: ...


class MessageBoxes:
    """The real dialogs: modal QMessageBoxes."""

    def confirm(self, title: str, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(
            None,
            title,
            text,
            QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.No,
            QtWidgets.QMessageBox.StandardButton.No,
        )
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def inform(self, title: str, text: str) -> None:
        QtWidgets.QMessageBox.information(None, title, text)

    def warn(self, title: str, text: str) -> None:
        QtWidgets.QMessageBox.warning(None, title, text)


def icon_for(level: Level) -> QtGui.QIcon:
    pixmap = QtGui.QPixmap(32, 32)
    pixmap.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pixmap)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setBrush(QtGui.QColor(COLORS[level]))
    painter.setPen(QtCore.Qt.PenStyle.NoPen)
    painter.drawEllipse(2, 2, 28, 28)
    if level is Level.AUDIT:  # audit mode: an exclamation mark, not only a colour
        painter.setBrush(QtGui.QColor("#000000"))
        painter.drawRect(14, 7, 4, 12)
        painter.drawEllipse(14, 22, 4, 4)
    painter.end()
    return QtGui.QIcon(pixmap)


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__


class Tray(QtCore.QObject):
    """Polls the agent and shows what it says (see the module doc)."""

    changed = QtCore.Signal(object)  # the new TrayView
    notified = QtCore.Signal(str, str)  # every desktop notification: title, text
    menu_changed = QtCore.Signal()

    def __init__(
        self,
        source: ControlSource,
        interval_ms: int = 3000,
        *,
        runner: Runner | None = None,
        dialogs: Dialogs | None = None,
        clock: Callable[[], float] = time.monotonic,
        notice_interval: float = 10.0,
    ) -> None:
        super().__init__()
        self.source = source
        self.runner: Runner = runner if runner is not None else PoolRunner(parent=self)
        self.dialogs: Dialogs = dialogs if dialogs is not None else MessageBoxes()
        self.clock = clock
        self.view = view_of(None, "not asked yet")
        self.status: dict[str, Any] | None = None
        self.feed = st.BlockedFeed()
        self.throttle = st.Throttle(notice_interval)
        self.prompts = st.RepullPrompts()
        self.repulling: set[str] = set()
        self.blocked_window: BlockedWindow | None = None
        self.features_window: FeaturesWindow | None = None
        self._asking_status = False
        self._asking_events = False
        self._asking_features = False
        self.entries: tuple[Entry, ...] = ()
        self.actions: dict[str, QtGui.QAction] = {}
        self.icon = QtWidgets.QSystemTrayIcon()
        self.icon.setIcon(icon_for(self.view.level))
        self.menu = QtWidgets.QMenu()
        self.icon.setContextMenu(self.menu)
        self._rebuild_menu()
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.tick)
        self.timer.start(interval_ms)
        self.icon.show()
        self.refresh()

    # -- menu ---------------------------------------------------------------------------------

    @property
    def title_action(self) -> QtGui.QAction:
        return self.actions[st.TITLE]

    def _rebuild_menu(self) -> None:
        entries = st.menu_entries(self.status, self.view, self.repulling)
        if entries == self.entries:
            return
        self.entries = entries
        self.menu.clear()
        self.actions = {}
        for entry in entries:
            if entry is st.SEPARATOR or entry.key == st.SEPARATOR.key:
                self.menu.addSeparator()
                continue
            action = self.menu.addAction(entry.text)
            action.setEnabled(entry.enabled)
            if entry.checkable:
                action.setCheckable(True)
                action.setChecked(entry.checked)
            if entry.key == st.TITLE:
                font = action.font()
                font.setBold(True)
                action.setFont(font)
            action.triggered.connect(lambda checked=False, key=entry.key: self.activate(key))
            self.actions[entry.key] = action
        emit(self.menu_changed)

    def activate(self, key: str) -> None:
        """What a menu entry does (`key` from `gui.state.menu_entries`)."""
        name, _, image = key.partition(":")
        if key == st.ECI_SWITCH:
            eci = self.status.get("eci") if self.status else None
            on_now = bool(eci.get("enabled")) if isinstance(eci, dict) else False
            self.actions[key].setChecked(on_now)  # the check mark follows the agent's answer
            self.set_eci(not on_now)
        elif key == st.ECI_FOLLOW:
            self.set_eci(None)
        elif name == st.REPULL:
            self.ask_repull(image)
        elif name == st.REPULL_LOCKED:
            item = next((i for i in st.repull_items(self.status) if i["image"] == image), None)
            self.dialogs.inform(
                f"{image} needs a re-pull", st.repull_locked_text(item or {"image": image})
            )
        elif key == st.BLOCKED:
            self.show_blocked()
        elif key == st.FEATURES:
            self.show_features()
        elif key == st.QUIT:
            self.icon.hide()
            QtWidgets.QApplication.quit()

    # -- polling ------------------------------------------------------------------------------

    def tick(self) -> None:
        self.refresh()
        self._notify(self.throttle.due(self.clock()))

    def refresh(self) -> None:
        """Ask for the status (then the new events); a call still under way is not repeated."""
        if self._asking_status:
            return
        self._asking_status = True
        self.runner.submit(self.source.status, self._status_done)

    def _status_done(self, status: Any, err: BaseException | None) -> None:
        self._asking_status = False
        if err is not None or not isinstance(status, dict):
            problem = (
                err
                if isinstance(err, AgentUnavailable)
                else AgentUnavailable(
                    f"unexpected answer from eci-agent: {_describe(err) if err else 'no object'}"
                )
            )
            self.status = None
            self._show(view_of(None, problem))
            return
        self.status = status
        self._show(view_of(status))
        events = status.get("events")
        if isinstance(events, dict):
            self.feed.agent_last_id(events.get("lastId"))
        for notice in self.prompts.new(status):
            self._notify(notice)
        self.poll_events()

    def _show(self, view: TrayView) -> None:
        before = self.view
        if view != before:
            self.view = view
            self.icon.setIcon(icon_for(view.level))
            self.icon.setToolTip(view.tooltip)
            emit(self.changed, view)
            self._notify(st.mode_notice(before, view))
        self._rebuild_menu()

    def poll_events(self) -> None:
        if self._asking_events:
            return
        self._asking_events = True
        q = self.feed.query()
        self.runner.submit(
            lambda: self.source.events(q.after, q.limit, q.kinds, q.newest), self._events_done
        )

    def _events_done(self, answer: Any, err: BaseException | None) -> None:
        self._asking_events = False
        window = self.blocked_window
        if err is not None or not isinstance(answer, dict):
            if window is not None:
                window.show_error(f"cannot read the events: {_describe(err or ValueError())}")
            return
        fresh = self.feed.take(answer)
        if window is not None:
            window.show_error(None)
            window.show_rows(self.feed.rows)
        self._notify(self.throttle.add(fresh, self.clock()))
        if self.feed.more:
            self.poll_events()

    def _notify(self, notice: Notice | None) -> None:
        if notice is None:
            return
        kind = (
            QtWidgets.QSystemTrayIcon.MessageIcon.Warning
            if notice.warning
            else QtWidgets.QSystemTrayIcon.MessageIcon.Information
        )
        self.icon.showMessage(notice.title, notice.text, kind, NOTICE_MS)
        emit(self.notified, notice.title, notice.text)

    # -- actions ------------------------------------------------------------------------------

    def set_eci(self, enabled: bool | None) -> None:
        def done(answer: Any, err: BaseException | None) -> None:
            if err is not None:
                self.dialogs.warn("Enhanced Container Isolation", _describe(err))
            elif isinstance(answer, dict) and isinstance(answer.get("message"), str):
                self._notify(Notice("Enhanced Container Isolation", answer["message"]))
            self.refresh()

        self.runner.submit(lambda: self.source.set_eci(enabled), done)

    def ask_repull(self, image: str) -> None:
        if image in self.repulling:
            return
        if not self.dialogs.confirm(f"Re-pull {image}", st.repull_question(image)):
            return
        self.repulling.add(image)
        self._rebuild_menu()

        def done(answer: Any, err: BaseException | None) -> None:
            self.repulling.discard(image)
            if err is not None:
                self.dialogs.warn(f"Re-pull of {image} failed", _describe(err))
            else:
                outcome = st.repull_outcome(answer if isinstance(answer, dict) else {})
                self._notify(Notice(f"{image} re-pulled", outcome))
            self._rebuild_menu()
            self.refresh()

        self.runner.submit(lambda: self.source.repull(image), done)

    # -- windows ------------------------------------------------------------------------------

    def show_blocked(self) -> BlockedWindow:
        if self.blocked_window is None:
            self.blocked_window = BlockedWindow()
        self.blocked_window.show_rows(self.feed.rows)
        self.blocked_window.show()
        self.blocked_window.raise_()
        self.blocked_window.activateWindow()
        self.poll_events()
        return self.blocked_window

    def show_features(self) -> FeaturesWindow:
        if self.features_window is None:
            self.features_window = FeaturesWindow()
            self.features_window.refresh_requested.connect(self.load_features)
        self.features_window.show()
        self.features_window.raise_()
        self.features_window.activateWindow()
        self.load_features()
        return self.features_window

    def load_features(self) -> None:
        if self._asking_features:
            return
        self._asking_features = True

        def done(doc: Any, err: BaseException | None) -> None:
            self._asking_features = False
            window = self.features_window
            if window is None:
                return
            if err is not None or not isinstance(doc, dict):
                window.show_error(f"cannot read the features: {_describe(err or ValueError())}")
            else:
                window.show_view(st.features_view(doc))

        self.runner.submit(self.source.features, done)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eci-tray")
    parser.add_argument("--control", default=DEFAULT_CONTROL_SOCKET)
    args = parser.parse_args(argv)
    app = QtWidgets.QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it (Qt's loop hides Python's)
    runner = PoolRunner()
    tray = Tray(ControlClient(args.control), runner=runner)  # kept: it must outlive exec()
    app.aboutToQuit.connect(tray.icon.hide)
    if not QtWidgets.QSystemTrayIcon.isSystemTrayAvailable():
        print(
            "eci-tray: this desktop offers no system tray, so there is nothing to show "
            f"(agent: {args.control}); see `eci-agent status` instead",
            file=sys.stderr,
        )
    code = app.exec()
    runner.pool.clear()
    if not runner.pool.waitForDone(1000):
        # A call (a re-pull) is still waiting on the agent; the agent finishes it on its own.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
