"""Compare's readout table: one row per metric, one column per comparison.

The values come from `inference.readouts` (`Readout`); the table only shows them:
the gain column in green where SR beats bicubic, red where it does not, and only the
rows a comparison has (the consistency column has PSNR and SSIM).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem

from napari_srgan_sqe.inference.readouts import (
    BICUBIC_VS_HR,
    CONSISTENCY,
    CONSISTENCY_METRICS,
    METRIC_TIPS,
    METRICS,
    SR_VS_HR,
    Readout,
    gain,
)
from napari_srgan_sqe.metrics import format_metric

COLUMN_LABELS = {
    SR_VS_HR: ("SR", "The super-resolved image compared with HR (the original scan)"),
    BICUBIC_VS_HR: (
        "bicubic",
        "Plain bicubic enlargement of the LR compared with HR: the baseline SR should beat",
    ),
    "gain": (
        "gain",
        "How much closer SR is to HR than bicubic is: positive (green) means SR is better "
        "(for RRMSE, bicubic minus SR, so positive is better there too)",
    ),
    CONSISTENCY: (
        "consistency with LR",
        "No HR to compare with, so SR is checked against its own input: SR is shrunk "
        "back 4x with the reference degradation D_4 and compared with the LR (D_s(SR) "
        "vs LR). High values mean SR keeps what the scan shows and contradicts none of "
        "it; they say nothing about how sharp or how true the added detail is.",
    ),
}
HR_CAPTION = "SR and bicubic (the baseline) against HR: higher is closer, RRMSE lower."
CONSISTENCY_CAPTION = "No HR: SR shrunk back to LR size against the LR (higher agrees more)."
HR_COLUMNS = [SR_VS_HR, BICUBIC_VS_HR, "gain"]
"""The columns with HR; without it, `[CONSISTENCY]`."""


class ReadoutTable(QTableWidget):
    """The readouts of the view (`show`), with `caption`: a label saying what they compare.

    It never scrolls: `fit` sizes it to every header and visible row.
    """

    def __init__(self) -> None:
        super().__init__(len(METRICS), 3)
        self.columns: list[str] = []
        """The comparisons shown, left to right (`Readout.columns` keys)."""
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for row, (key, label) in enumerate(METRICS):
            item = QTableWidgetItem(label)
            item.setToolTip(METRIC_TIPS[key])
            self.setVerticalHeaderItem(row, item)
        rows, columns = self.verticalHeader(), self.horizontalHeader()
        assert rows is not None and columns is not None
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(self.fontMetrics().height() + 8)
        columns.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)

    def set_columns(self, names: list[str]) -> bool:
        """Show these comparisons as columns, and only the metric rows they have; False
        when they are shown already (nothing changed)."""
        if names == self.columns:
            return False
        self.columns = list(names)
        self.clearContents()
        self.setColumnCount(len(names))
        for col, name in enumerate(names):
            label, tip = COLUMN_LABELS[name]
            item = QTableWidgetItem(label)
            item.setToolTip(tip)
            self.setHorizontalHeaderItem(col, item)
        for row, (key, _) in enumerate(METRICS):
            self.setRowHidden(row, names == [CONSISTENCY] and key not in CONSISTENCY_METRICS)
        self.caption.setText(CONSISTENCY_CAPTION if names == [CONSISTENCY] else HR_CAPTION)
        self.caption.setToolTip(COLUMN_LABELS[names[0]][1])
        return True

    def clear_values(self) -> None:
        """Empty every value cell (row and column headers stay)."""
        for row in range(self.rowCount()):
            for col in range(self.columnCount()):
                self.setItem(row, col, QTableWidgetItem(""))

    def show_readout(self, readout: Readout) -> None:
        """Fill the cells from `readout` (the columns it has so far)."""
        for col, name in enumerate(self.columns):
            values = readout.columns.get(name)
            if name == "gain":
                values = gain(readout.columns.get(SR_VS_HR), readout.columns.get(BICUBIC_VS_HR))
            for row, (key, _) in enumerate(METRICS):
                value = None if values is None else values.get(key)
                item = QTableWidgetItem(format_metric(key, value, signed=name == "gain"))
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(f"{COLUMN_LABELS[name][0]}, {METRICS[row][1]}")
                if (
                    name == "gain"
                    and value is not None
                    and format_metric(key, abs(value)) != format_metric(key, 0.0)
                ):
                    item.setForeground(QColor("#4caf50" if value > 0 else "#e57373"))
                self.setItem(row, col, item)

    def fit(self) -> None:
        """Size the table to show every header and visible row without scrolling."""
        fm = self.fontMetrics()
        header, rows = self.horizontalHeader(), self.verticalHeader()
        assert header is not None and rows is not None
        pad = fm.horizontalAdvance("M")
        widest_value = fm.horizontalAdvance("+0.0000")
        widths = [
            max(fm.horizontalAdvance(self._header_text(c)), widest_value) + pad
            for c in range(self.columnCount())
        ]
        header.setMinimumSectionSize(min(widths) if widths else 40)
        labels = max(fm.horizontalAdvance(label) for _, label in METRICS) + pad
        rows.setMinimumWidth(labels)
        frame = 2 * self.frameWidth()
        self.setMinimumWidth(labels + sum(widths) + frame)
        shown = [r for r in range(self.rowCount()) if not self.isRowHidden(r)]
        height = header.sizeHint().height() + sum(self.rowHeight(r) for r in shown) + frame
        self.setFixedHeight(height)

    def _header_text(self, column: int) -> str:
        """The label of a column (`set_columns` gives every column a header item)."""
        item = self.horizontalHeaderItem(column)
        assert item is not None
        return item.text()
