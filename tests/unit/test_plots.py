"""Evaluation figures render to PNG without a display, at any class count (that importing evaluation
leaves matplotlib unloaded is checked in a fresh interpreter: tests/integration/test_imports.py)."""

import io

import numpy as np
import pytest

from kdflow.evaluation.calibration import expected_calibration_error, reliability_bins
from kdflow.evaluation.plots import MAX_INCHES, confusion_matrix_png, reliability_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from the PNG IHDR chunk, which always follows the 8-byte magic."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_confusion_matrix_png_small():
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # last class absent from the split: a zero row
    png = confusion_matrix_png(matrix, ["cat", "dog", "bird"])
    assert png.startswith(PNG_MAGIC)


def test_confusion_matrix_png_renders_1000_classes_within_the_size_cap():
    matrix = np.random.default_rng(0).integers(0, 5, (1000, 1000))
    png = confusion_matrix_png(matrix, [f"c{i}" for i in range(1000)], title="big")
    assert png.startswith(PNG_MAGIC)
    width, height = _size(png)
    assert width <= (MAX_INCHES + 1) * 100 and height <= MAX_INCHES * 100


def test_confusion_matrix_png_rejects_mismatched_names():
    with pytest.raises(ValueError, match="class_names"):
        confusion_matrix_png(np.zeros((3, 3), dtype=int), ["a", "b"])


def test_reliability_png_with_empty_bins():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [1.0, 0.0]])
    bins = reliability_bins(probs, np.array([0, 1, 0, 0]), bins=10)
    png = reliability_png(bins, expected_calibration_error(bins))
    assert png.startswith(PNG_MAGIC)
    from PIL import Image

    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert reliability_png(reliability_bins(np.zeros((0, 2)), np.zeros(0, dtype=int)), 0.0).startswith(PNG_MAGIC)


def test_rendering_registers_no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    confusion_matrix_png(np.eye(4, dtype=int), list("abcd"))
    reliability_png(reliability_bins(np.eye(3), np.arange(3)), 0.0)
    assert plt.get_fignums() == before
