"""The blocked-requests window: recent `denied` (and, in audit mode, `would-deny`) events."""

from __future__ import annotations

import html
from collections.abc import Iterable

from PySide6 import QtCore, QtGui, QtWidgets

from gui.state import Blocked

COLUMNS = ("Time", "Decision", "What was refused", "Container", "Image", "Request")


class BlockedWindow(QtWidgets.QWidget):
    """Newest first; the tray feeds it with `show_rows` after every poll."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("eci-agent: blocked requests")
        self.resize(900, 400)
        layout = QtWidgets.QVBoxLayout(self)
        self.summary = QtWidgets.QLabel("No blocked requests yet.")
        self.summary.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(True)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.Stretch)
        layout.addWidget(self.table)
        self.error = QtWidgets.QLabel("")
        self.error.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.error.setStyleSheet("color: #c62828; font-weight: bold")
        self.error.setWordWrap(True)
        self.error.hide()
        layout.addWidget(self.error)
        self._shown: tuple[int, ...] = ()

    def show_rows(self, rows: Iterable[Blocked]) -> None:
        newest_first = sorted(rows, key=lambda r: r.id, reverse=True)
        ids = tuple(r.id for r in newest_first)
        if ids == self._shown:
            return
        self._shown = ids
        self.table.setRowCount(len(newest_first))
        for i, row in enumerate(newest_first):
            cells = (row.when, row.label, row.message, row.container, row.image, row.request)
            for j, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                # Qt reads a tooltip that looks like HTML as HTML: these words are a client's
                # own (a path, an image name), so they are shown escaped, as written.
                item.setToolTip(f"<p style='white-space:pre-wrap'>{html.escape(text)}</p>")
                if row.would:
                    item.setForeground(QtGui.QColor("#8d6e00"))
                self.table.setItem(i, j, item)
        denied = sum(1 for r in newest_first if not r.would)
        would = len(newest_first) - denied
        text = f"{denied} refused" + (f", {would} would be refused (audit mode)" if would else "")
        self.summary.setText(
            text + " (most recent first)" if newest_first else "No blocked requests yet."
        )
        self.table.resizeRowsToContents()

    def show_error(self, message: str | None) -> None:
        self.error.setText(message or "")
        self.error.setVisible(bool(message))

    def row_texts(self) -> list[list[str]]:
        """What the table shows, cell by cell (for tests and accessibility checks)."""
        out: list[list[str]] = []
        for i in range(self.table.rowCount()):
            cells = [self.table.item(i, j) for j in range(self.table.columnCount())]
            out.append([c.text() if c is not None else "" for c in cells])
        return out
