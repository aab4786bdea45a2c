"""The features window: `GET /v1/features` (platform, isolation, mode, rows, warnings)."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from gui.state import FeaturesView

COLUMNS = ("Feature", "State", "Used", "Detail")


class FeaturesWindow(QtWidgets.QWidget):
    refresh_requested = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("eci-agent: features")
        self.resize(900, 500)
        layout = QtWidgets.QVBoxLayout(self)
        self.warnings = QtWidgets.QLabel("")
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet(
            "background: #ffebee; color: #b71c1c; font-weight: bold; padding: 6px;"
            "border: 1px solid #c62828"
        )
        self.warnings.hide()
        layout.addWidget(self.warnings)
        form = QtWidgets.QFormLayout()
        self.platform = QtWidgets.QLabel("…")
        self.engine = QtWidgets.QLabel("…")
        self.isolation = QtWidgets.QLabel("…")
        self.isolation.setWordWrap(True)
        self.mode = QtWidgets.QLabel("…")
        form.addRow("Platform:", self.platform)
        form.addRow("Engine:", self.engine)
        form.addRow("Isolation:", self.isolation)
        form.addRow("Mode:", self.mode)
        layout.addLayout(form)
        self.notices = QtWidgets.QLabel("")
        self.notices.setWordWrap(True)
        self.notices.hide()
        layout.addWidget(self.notices)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(
            3, QtWidgets.QHeaderView.ResizeMode.Stretch
        )
        layout.addWidget(self.table)
        bottom = QtWidgets.QHBoxLayout()
        self.error = QtWidgets.QLabel("")
        self.error.setStyleSheet("color: #c62828; font-weight: bold")
        self.error.setWordWrap(True)
        bottom.addWidget(self.error, 1)
        self.refresh_button = QtWidgets.QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_requested)
        bottom.addWidget(self.refresh_button)
        layout.addLayout(bottom)

    def show_view(self, view: FeaturesView) -> None:
        self.error.setText("")
        self.warnings.setText("\n".join(f"⚠ {w}" for w in view.warnings))
        self.warnings.setVisible(bool(view.warnings))
        self.notices.setText("\n".join(f"ℹ {n}" for n in view.notices))
        self.notices.setVisible(bool(view.notices))
        self.platform.setText(view.platform)
        self.engine.setText(view.engine)
        self.isolation.setText(view.isolation)
        self.mode.setText(view.mode)
        if view.mode.startswith("AUDIT"):
            self.mode.setStyleSheet("color: #b71c1c; font-weight: bold")
        else:
            self.mode.setStyleSheet("")
        self.table.setRowCount(len(view.rows))
        for i, row in enumerate(view.rows):
            cells = (row.title, row.state, "yes" if row.used else "", row.detail)
            for j, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setToolTip(f"{row.name}: {text}" if j == 0 else text)
                self.table.setItem(i, j, item)
        for column in range(3):
            self.table.resizeColumnToContents(column)

    def show_error(self, message: str) -> None:
        self.error.setText(message)
