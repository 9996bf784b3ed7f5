"""The Fine-tune widget's live plot: training loss and validation PSNR against the step."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QPointF, QRectF, QSize
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

__all__ = ["CurvePlot"]


class CurvePlot(QWidget):
    """A small live plot against the training step: training loss (orange, left axis)
    and validation PSNR in dB on the held-out stripes (blue, right axis).

    The legend sits in its own row above the plotting area, so no curve covers it;
    each axis is labelled with its range, in the colour of its curve.
    """

    LOSS_COLOR = QColor(230, 140, 30)
    PSNR_COLOR = QColor(60, 140, 230)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.loss: list[tuple[float, float]] = []
        self.psnr: list[tuple[float, float]] = []
        self.setToolTip(
            "Training loss (left axis, no unit: the weighted sum of the loss terms) and "
            "PSNR on the held-out stripes (right axis, dB; step 0 = the model before "
            "fine-tuning), against the training step"
        )

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(280, 170)

    def clear(self) -> None:
        self.loss, self.psnr = [], []
        self.update()

    def add_loss(self, step: int, value: float) -> None:
        self.loss.append((float(step), float(value)))

    def add_val(self, step: int, value: float) -> None:
        self.psnr.append((float(step), float(value)))

    def plot_rect(self) -> QRectF:
        """The plotting area (inside the axes), in widget pixels."""
        return self._layout(self.fontMetrics())[0]

    def legend_rect(self) -> QRectF:
        """The legend rows above the plotting area (never overlapped by a curve)."""
        return self._layout(self.fontMetrics())[1]

    def _legend(self) -> list[tuple[QColor, str]]:
        loss = f": {self.loss[-1][1]:.4g}" if self.loss else ""
        psnr = f": {self.psnr[-1][1]:.2f} dB" if self.psnr else " (dB)"
        return [
            (self.LOSS_COLOR, f"training loss{loss}"),
            (self.PSNR_COLOR, f"validation PSNR{psnr}"),
        ]

    def _legend_places(self, fm: Any) -> list[tuple[float, int]]:
        """(x, row) of each legend item: side by side, or wrapped when too narrow."""
        places, x, row = [], 2.0, 0
        for _, label in self._legend():
            width = 18 + fm.horizontalAdvance(label)
            if x > 2.0 and x + width > self.width():
                x, row = 2.0, row + 1
            places.append((x, row))
            x += width + 12
        return places

    def _ticks(self) -> tuple[list[str], list[str]]:
        loss = [f"{v:.3g}" for v in _axis_range(self.loss)[::-1]] if self.loss else ["", ""]
        psnr = _tick_labels(_axis_range(self.psnr)[::-1]) if self.psnr else ["", ""]
        return loss, psnr

    def _layout(self, fm: Any) -> tuple[QRectF, QRectF]:
        line = fm.height()
        loss, psnr = self._ticks()
        left = max(fm.horizontalAdvance(t) for t in [*loss, "loss"]) + 6
        right = max(fm.horizontalAdvance(t) for t in [*psnr, "dB"]) + 6
        rows = 1 + max(row for _, row in self._legend_places(fm))
        legend = QRectF(0, 0, self.width(), rows * line + 4)
        top = legend.bottom() + line  # the axis titles' row
        bottom = self.height() - 2 * line - 2  # tick labels and the "step" title below
        area = QRectF(left, top, max(10.0, self.width() - left - right), max(10.0, bottom - top))
        return area, legend

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = p.fontMetrics()
        line = fm.height()
        area, legend = self._layout(fm)
        text = self.palette().color(self.foregroundRole())
        grey = QColor(128, 128, 128)

        for (color, label), (x, row) in zip(self._legend(), self._legend_places(fm), strict=True):
            y = legend.top() + 2 + row * line  # a colour swatch, then the name and latest value
            p.setPen(QPen(color, 3))
            p.drawLine(QPointF(x, y + line / 2), QPointF(x + 14, y + line / 2))
            p.setPen(text)
            p.drawText(QPointF(x + 18, y + fm.ascent()), label)

        p.setPen(QPen(grey))
        p.drawRect(area)
        loss_ticks, psnr_ticks = self._ticks()
        # axis titles above the axes; tick labels inside the axes' height, beside them
        rows = ((area.top() + fm.ascent(), 0), (area.bottom() - fm.descent(), 1))
        p.setPen(self.LOSS_COLOR)
        p.drawText(QPointF(2, area.top() - fm.descent() - 2), "loss")
        for yy, i in rows:
            w = fm.horizontalAdvance(loss_ticks[i])
            p.drawText(QPointF(area.left() - w - 3, yy), loss_ticks[i])
        p.setPen(self.PSNR_COLOR)
        p.drawText(QPointF(area.right() + 3, area.top() - fm.descent() - 2), "dB")
        for yy, i in rows:
            p.drawText(QPointF(area.right() + 3, yy), psnr_ticks[i])
        steps = [s for s, _ in self.loss + self.psnr] or [0.0]
        x_max = max(max(steps), 1.0)
        p.setPen(text)
        base = area.bottom() + fm.ascent() + 2
        p.drawText(QPointF(area.left(), base), "0")
        last = f"{x_max:.0f}"
        p.drawText(QPointF(area.right() - fm.horizontalAdvance(last), base), last)
        title = "training step"
        p.drawText(QPointF(area.center().x() - fm.horizontalAdvance(title) / 2, base + line), title)

        p.setClipRect(area)
        for series, color in ((self.loss, self.LOSS_COLOR), (self.psnr, self.PSNR_COLOR)):
            if not series:
                continue
            lo, hi = _axis_range(series)
            pts = [
                QPointF(
                    area.left() + area.width() * s / x_max,
                    area.bottom() - area.height() * (v - lo) / (hi - lo),
                )
                for s, v in series
            ]
            p.setPen(QPen(color, 1.5))
            for a, b in zip(pts, pts[1:], strict=False):
                p.drawLine(a, b)
            if len(pts) <= 8:
                for pt in pts:
                    p.drawEllipse(pt, 2.0, 2.0)
        p.end()


def _tick_labels(values: tuple[float, ...]) -> list[str]:
    """Labels with enough decimals (1 to 3) to tell the values apart."""
    import math

    span = max(values) - min(values)
    decimals = 1 if span >= 1 or span == 0 else min(3, max(1, -math.floor(math.log10(span))))
    return [f"{v:.{decimals}f}" for v in values]


def _axis_range(series: list[tuple[float, float]]) -> tuple[float, float]:
    """(low, high) of a curve's values with 5% room, never empty."""
    values = [v for _, v in series]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad
