"""Work-arounds for the PySide6 in use.

`emit`: PySide6 6.12's `SignalInstance.emit()` returns `True` without a new reference, so every
discarded result takes one reference from `True`; on Python < 3.12 (mortal bools) the process
aborts ("bool_dealloc") once enough signals were emitted, e.g. after a day of a tray polling.
`emit` gives the reference back when a probe shows the slip, and does nothing extra otherwise.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from PySide6 import QtCore


class _Probe(QtCore.QObject):
    ping = QtCore.Signal()


def _emit_loses_a_reference() -> bool:
    if sys.version_info >= (3, 12):
        return False  # immortal bools: a lost reference cannot hurt
    probe = _Probe()
    rounds = 8
    before = sys.getrefcount(True)
    for _ in range(rounds):
        probe.ping.emit()
    lost = before - sys.getrefcount(True)
    for _ in range(max(lost, 0)):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))  # undo the probe's own damage
    return lost >= rounds


_LOSES = _emit_loses_a_reference()


def emit(signal: Any, *args: Any) -> None:
    """`signal.emit(*args)`, without the reference slip described in the module doc."""
    result = signal.emit(*args)
    if _LOSES and isinstance(result, bool):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))
