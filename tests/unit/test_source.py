"""source_fingerprint: a cheap content key of the raw input folder, local or on S3 (moto's server)."""

import shutil

import pytest

from kdflow.data.source import list_source, source_fingerprint
from kdflow.errors import DataError
from tests.helpers import class_image, make_image_folder, png_bytes, upload_folder




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


def test_s3_fingerprint_changes_with_every_edit(s3_bucket):
    import boto3

    s3 = boto3.client("s3")
    key = f"s3://{s3_bucket}/data/"
    s3.put_object(Bucket=s3_bucket, Key="data/a/1.png", Body=b"one")
    s3.put_object(Bucket=s3_bucket, Key="data/b/2.png", Body=b"two")
    s3.put_object(Bucket=s3_bucket, Key="database/c/3.png", Body=b"not below data/")
    seen = {source_fingerprint(key)}
    assert source_fingerprint(key.rstrip("/")) in seen  # with or without the trailing slash
    assert [f.rel for f in list_source(key).files] == ["a/1.png", "b/2.png"]
    edits = [
        ("add", lambda: s3.put_object(Bucket=s3_bucket, Key="data/a/3.png", Body=b"three")),
        ("remove", lambda: s3.delete_object(Bucket=s3_bucket, Key="data/a/3.png")),
        ("rename", lambda: (s3.copy_object(Bucket=s3_bucket, Key="data/a/1b.png",
                                           CopySource={"Bucket": s3_bucket, "Key": "data/a/1.png"}),
                            s3.delete_object(Bucket=s3_bucket, Key="data/a/1.png"))),
        ("change, same size", lambda: s3.put_object(Bucket=s3_bucket, Key="data/b/2.png", Body=b"TWO")),
    ]
    for what, edit in edits:
        edit()
        fp = source_fingerprint(key)
        # "remove" undoes "add": it must return to a fingerprint seen before, and only then.
        assert (fp in seen) == (what == "remove"), what
        seen.add(fp)
    s3.put_object(Bucket=s3_bucket, Key="database/c/4.png", Body=b"outside the prefix")
    assert source_fingerprint(key) == fp


def test_s3_and_local_copies_list_alike(tmp_path, s3_bucket):
    root = make_image_folder(tmp_path / "d", per_class=3)
    (root / "apple" / "deep").mkdir()
    (root / "apple" / "deep" / "x.png").write_bytes(png_bytes(class_image(0, seed=1)))
    uri = upload_folder(root, s3_bucket, "imgs")
    local, remote = list_source(str(root)), list_source(uri)
    assert [(f.rel, f.size) for f in local.files] == [(f.rel, f.size) for f in remote.files]
    assert remote.root == f"s3://{s3_bucket}/imgs" and all(f.etag for f in remote.files)


def test_an_empty_s3_prefix_is_a_data_error(s3_bucket):
    with pytest.raises(DataError, match="holds no objects"):
        source_fingerprint(f"s3://{s3_bucket}/nothing/")
