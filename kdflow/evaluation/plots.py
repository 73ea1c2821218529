"""Figures for the evaluation report, rendered to PNG bytes.

matplotlib is imported inside each function: importing ``kdflow.evaluation`` must stay cheap and
must not need matplotlib at all in steps that draw nothing. Figures are built as bare
``matplotlib.figure.Figure`` objects on an Agg canvas rather than through ``pyplot``: nothing is
registered in pyplot's global figure list (so nothing leaks across calls in a long-lived process),
no display is needed, and the process-wide backend a caller may have chosen is left alone.
"""

from __future__ import annotations

import io

import numpy as np

# Figures never grow past this many inches a side (at 100 dpi): a 1000-class matrix is drawn as an
# image of one pixel-ish per cell, not as a poster.
MAX_INCHES = 12.0
COUNTS_MAX_CLASSES = 20  # counts written in cells up to this many classes
TICKS_MAX_CLASSES = 50  # class names as tick labels up to this many classes
DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()  # drop the artists now rather than waiting for the garbage collector
    return buf.getvalue()


def confusion_matrix_png(matrix: np.ndarray, class_names: list[str],
                         title: str = "Confusion matrix (test split)") -> bytes:
    """PNG of ``matrix`` (int [C, C], rows = true class, columns = predicted).

    Colours are row-normalised (recall per true class) so rare and common classes are comparable;
    the cells show raw counts when C <= 20 and the axes show class names when C <= 50.
    """
    matrix = np.asarray(matrix)
    c = matrix.shape[0]
    if matrix.shape != (c, c) or len(class_names) != c:
        raise ValueError(f"matrix must be [C, C] with C = len(class_names); got {matrix.shape}, {len(class_names)}")
    rows = matrix.sum(axis=1, keepdims=True)  # [C, 1]
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)  # [C, C]

    side = min(MAX_INCHES, max(4.0, 2.5 + 0.4 * c))
    fig = _figure(side + 1.0, side)  # the extra inch is for the colour bar
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_title(title)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= TICKS_MAX_CLASSES:
        ax.set_xticks(range(c), labels=class_names, rotation=90 if c > 10 else 45, ha="center" if c > 10 else "right")
        ax.set_yticks(range(c), labels=class_names)
    if c <= COUNTS_MAX_CLASSES:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if normalised[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _png(fig)


def reliability_png(bins: list[dict], ece: float, title: str = "Reliability diagram (test split)") -> bytes:
    """PNG reliability diagram (Guo et al., 2017, fig. 1) of ``calibration.reliability_bins`` output.

    Bars are the accuracy per confidence bin, the dashed diagonal is perfect calibration, and the
    shaded bars span each bin's gap between accuracy and mean confidence; empty bins are left blank.
    """
    full = [b for b in bins if b["count"]]
    centres = [(b["lower"] + b["upper"]) / 2 for b in full]
    widths = [b["upper"] - b["lower"] for b in full]
    accuracy = [b["accuracy"] for b in full]
    confidence = [b["confidence"] for b in full]

    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(centres, accuracy, width=widths, color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar(centres, [abs(a - cf) for a, cf in zip(accuracy, confidence, strict=True)], width=widths,
           bottom=[min(a, cf) for a, cf in zip(accuracy, confidence, strict=True)], color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", linewidth=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {ece:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _png(fig)
