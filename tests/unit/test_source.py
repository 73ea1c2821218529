"""source_fingerprint: a cheap content key of the raw input folder (on S3, against moto's server:
tests/integration/test_source_s3.py)."""

import shutil

import pytest

from kdflow.data.source import source_fingerprint
from kdflow.util.errors import DataError
from tests.helpers import class_image, make_image_folder, png_bytes




def _edits(root):
    """Each edit in turn (applied cumulatively); each must change the fingerprint."""
    yield "add", lambda: (root / "kiwi" / "new.png").write_bytes(png_bytes(class_image(1, seed=4242)))
    yield "remove", lambda: (root / "apple" / "000.png").unlink()
    yield "rename", lambda: (root / "plum" / "001.jpg").rename(root / "plum" / "001-renamed.jpg")
    yield "move to another class", lambda: (root / "plum" / "002.png").rename(root / "kiwi" / "002.png")

    def same_size_change():  # a content change that keeps the size: only the hash can see it
        p = root / "kiwi" / "004.png"
        raw = bytearray(p.read_bytes())
        raw[-20] ^= 0x01
        p.write_bytes(bytes(raw))

    yield "change in place", same_size_change
    yield "empty class folder", lambda: (root / "fig").mkdir()


def test_local_fingerprint_changes_with_every_edit_and_nothing_else(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6)
    seen = {source_fingerprint(str(root))}
    assert source_fingerprint(str(root)) in seen  # stable
    assert source_fingerprint(root.as_uri()) in seen  # file:// is the same folder
    copy = shutil.copytree(root, tmp_path / "elsewhere")
    assert source_fingerprint(str(copy)) in seen  # where the folder lies does not matter
    for what, edit in _edits(root):
        edit()
        fp = source_fingerprint(str(root))
        assert fp not in seen, what
        seen.add(fp)


def test_a_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        source_fingerprint(str(tmp_path / "nope"))
