"""source_fingerprint and the listing of a raw input folder on S3 (moto's server on loopback): the same
key as a local folder's rules give, changed by every edit below the prefix and by nothing outside it."""

import pytest

from kdflow.data.source import list_source, source_fingerprint
from kdflow.util.errors import DataError
from tests.helpers import class_image, make_image_folder, png_bytes, upload_folder


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
