"""Blocking control-API calls off the UI thread: a QThreadPool worker per call, its outcome
handed back to the UI thread with `QTimer.singleShot(0, context, ...)` (queued to the thread
the runner lives in; no Python-side signal emission, see `gui.qtcompat`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from PySide6 import QtCore

#: Called in the UI thread with (result, None) or (None, the exception).
Done = Callable[[Any, BaseException | None], None]


class Runner(Protocol):
    def submit(self, call: Callable[[], Any], done: Done) -> None: ...


class InlineRunner:
    """Runs the call at once, in the caller's thread (for tests that want no threads)."""

    def submit(self, call: Callable[[], Any], done: Done) -> None:
        try:
            result = call()
        except Exception as err:
            done(None, err)
        else:
            done(result, None)


class _Job(QtCore.QRunnable):
    def __init__(self, runner: PoolRunner, call: Callable[[], Any], done: Done) -> None:
        super().__init__()
        self.runner = runner
        self.call = call
        self.done = done

    def run(self) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = self.call()
        except Exception as err:
            error = err
        done = self.done
        QtCore.QTimer.singleShot(0, self.runner, lambda: done(result, error))


class PoolRunner(QtCore.QObject):
    """Calls run in its own QThreadPool; `done` runs in the thread this object lives in."""

    def __init__(self, threads: int = 6, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = QtCore.QThreadPool(self)
        self.pool.setMaxThreadCount(threads)

    def submit(self, call: Callable[[], Any], done: Done) -> None:
        self.pool.start(_Job(self, call, done))

    def busy(self) -> bool:
        return self.pool.activeThreadCount() > 0
