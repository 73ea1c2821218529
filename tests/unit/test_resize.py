"""data.resize: squash (ignore the aspect ratio) vs short_side (resize the short side, centre-crop)."""

import numpy as np
import pytest
from PIL import Image

from kdflow.config import DataConfig
from kdflow.data.imagefolder import Candidate, decode_one
from kdflow.data.preprocess import preprocess
from tests.helpers import class_image, make_image_folder, png_bytes

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def _wide_split(h: int = 20, w: int = 40) -> np.ndarray:
    """h x w, left quarter red, middle half green, right quarter blue."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 4] = RED
    img[:, w // 4 : 3 * w // 4] = GREEN
    img[:, 3 * w // 4 :] = BLUE
    return img


def _centred_square(h: int = 20, w: int = 40, side: int = 10) -> np.ndarray:
    """h x w white background with a black side x side square in the centre."""
    img = np.full((h, w, 3), 255, np.uint8)
    top, left = (h - side) // 2, (w - side) // 2
    img[top : top + side, left : left + side] = 0
    return img


def _decode(tmp_path, arr: np.ndarray, size: int, resize: str) -> np.ndarray:
    f = tmp_path / "x.png"
    f.write_bytes(png_bytes(arr))
    d = decode_one(Candidate(f, "c/x.png", "c", None), size, resize)
    assert d.reason is None and d.image is not None
    return d.image


def _reference_short_side(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize + centre crop, computed independently of kdflow with PIL and numpy slicing."""
    h, w = arr.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    big = np.asarray(Image.fromarray(arr).resize((new_w, new_h), Image.Resampling.BILINEAR))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return big[top : top + size, left : left + size]


def test_squash_keeps_all_content_squeezed(tmp_path):
    out = _decode(tmp_path, _wide_split(), 16, "squash")
    assert out.shape == (16, 16, 3)
    # The whole width survives: red on the left edge, blue on the right, green in the middle.
    assert tuple(out[8, 0]) == RED and tuple(out[8, -1]) == BLUE and tuple(out[8, 8]) == GREEN
    expected = np.asarray(Image.fromarray(_wide_split()).resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)


def test_short_side_crops_the_centre(tmp_path):
    out = _decode(tmp_path, _wide_split(), 16, "short_side")
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, _reference_short_side(_wide_split(), 16))
    # 20x40 -> 16x32, keep columns 8..24: the green middle half. The red and blue quarters are cut
    # off; only the bilinear filter's blending reaches the crop's outermost columns.
    g = out.astype(int)
    assert (g[..., 1] > g[..., 0]).all() and (g[..., 1] > g[..., 2]).all()
    assert (out[:, 2:-2] == np.array(GREEN, np.uint8)).all()


@pytest.mark.parametrize("shape", [(20, 40), (40, 20), (21, 40), (17, 31)])
def test_short_side_matches_independent_reference(tmp_path, shape):
    h, w = shape
    arr = class_image(0, seed=h * 100 + w, size=max(h, w))[:h, :w].copy()
    np.testing.assert_array_equal(_decode(tmp_path, arr, 12, "short_side"), _reference_short_side(arr, 12))


def _dark_extent(img: np.ndarray) -> tuple[int, int]:
    """(rows, columns) spanned by dark pixels."""
    dark = img.mean(axis=2) < 128
    rows, cols = np.nonzero(dark.any(axis=1))[0], np.nonzero(dark.any(axis=0))[0]
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_short_side_keeps_a_square_square(tmp_path):
    arr = _centred_square()  # 20x40 with a 10x10 square in the middle
    rows, cols = _dark_extent(_decode(tmp_path, arr, 16, "short_side"))
    assert rows == cols == 8  # scaled by 16/20, still square
    rows, cols = _dark_extent(_decode(tmp_path, arr, 16, "squash"))
    assert rows == 8 and cols <= 5  # squashed horizontally by 16/40: a tall thin bar


def test_square_input_is_identical_in_both_modes(tmp_path):
    arr = class_image(1, seed=5, size=16)
    same = _decode(tmp_path, arr, 16, "squash")
    np.testing.assert_array_equal(same, arr)  # already the right size: untouched
    np.testing.assert_array_equal(_decode(tmp_path, arr, 16, "short_side"), same)
    big = class_image(2, seed=6, size=24)  # square but larger: both modes are the same plain resize
    np.testing.assert_array_equal(_decode(tmp_path, big, 16, "short_side"), _decode(tmp_path, big, 16, "squash"))


def test_unknown_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="resize"):
        _decode(tmp_path, _wide_split(), 16, "stretch")


def test_resize_mode_changes_the_fingerprint(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6)
    # Make some images non-square so the two modes really produce different pixels.
    for i, name in enumerate(("apple", "kiwi", "plum")):
        (root / name / "wide.png").write_bytes(png_bytes(class_image(i, seed=50 + i, size=24)[:12]))
    base = dict(image_size=8, val_fraction=0.2, test_fraction=0.2, seed=3)
    squash = preprocess(str(root), str(tmp_path / "a"), DataConfig(**base))
    short = preprocess(str(root), str(tmp_path / "b"), DataConfig(**base, resize="short_side"))
    assert squash.spec.resize == "squash" and short.spec.resize == "short_side"
    assert squash.spec.interpolation == short.spec.interpolation == "bilinear"
    assert squash.fingerprint != short.fingerprint
    # Same mode, same data: the fingerprint is stable.
    again = preprocess(str(root), str(tmp_path / "c"), DataConfig(**base, resize="short_side"))
    assert again.fingerprint == short.fingerprint
