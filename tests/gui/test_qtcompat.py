"""`gui.qtcompat.emit`: emitting signals must not wear down `True`'s reference count."""

from __future__ import annotations

import sys
from typing import Any

from PySide6 import QtCore

from gui.qtcompat import emit


class Emitter(QtCore.QObject):
    fired = QtCore.Signal(str)


def test_emit_keeps_true_alive(qtbot: Any) -> None:
    emitter = Emitter()
    seen: list[str] = []
    emitter.fired.connect(seen.append)
    before = sys.getrefcount(True)
    for _ in range(500):
        emit(emitter.fired, "x")
    assert len(seen) == 500
    assert abs(sys.getrefcount(True) - before) < 50
