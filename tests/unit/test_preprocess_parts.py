"""Preprocess in two phases (decode parts into spools, then assemble): the same dataset whatever the
number of parts, resumable parts, shards written as they fill, and memory that does not grow with
the folder."""

import tracemalloc

import numpy as np
import pytest

from kdflow.config import Config, DataConfig
from kdflow.data.preprocess import assemble, decode_part, plan_parts, preprocess
from kdflow.data.shards import ImageShardWriter, SplitArrays, write_split_shards
from kdflow.util.errors import ConfigError, DataError
from kdflow.data.source import source_fingerprint
from kdflow.steps.preprocess import (
    run_plan_preprocess,
    run_preprocess,
    run_preprocess_assemble,
    run_preprocess_part,
)
from tests.helpers import class_image, dataset_files, make_image_folder, messy_folder, png_bytes


@pytest.mark.parametrize("cfg", [
    DataConfig(image_size=8, val_fraction=0.2, seed=3, shard_size=7),
    DataConfig(image_size=12, resize="short_side", group_by="phash", group_distance=8, shard_size=5, seed=1),
    DataConfig(image_size=8, group_by="regex", group_pattern=r"(\d)\.(png|jpg)$", shard_size=1000),
])
def test_any_number_of_parts_writes_the_same_dataset(tmp_path, cfg):
    root = messy_folder(tmp_path / "d")
    one = preprocess(str(root), str(tmp_path / "one"), cfg)
    for parts in (3, 40):  # 40 parts: some hold a single file, or none that decodes
        work = tmp_path / f"work{parts}"
        for part in range(parts):
            decode_part(str(root), str(work), cfg, part, parts)
        fanned = assemble(str(root), str(work), str(tmp_path / f"out{parts}"), cfg, parts)
        assert fanned.to_dict() == one.to_dict()
        assert dataset_files(tmp_path / f"out{parts}") == dataset_files(tmp_path / "one")
    assert one.report.duplicates_removed == 4 and one.report.dropped == 4


def test_a_decoded_part_is_kept_and_a_missing_one_is_named(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=5)
    cfg = DataConfig(image_size=8)
    uri = decode_part(str(root), str(tmp_path / "w"), cfg, 1, 2)
    stamp = (tmp_path / "w" / "parts").stat().st_mtime_ns, tmp_path.joinpath(uri).stat().st_mtime_ns
    assert decode_part(str(root), str(tmp_path / "w"), cfg, 1, 2) == uri  # a retried task: nothing redone
    assert ((tmp_path / "w" / "parts").stat().st_mtime_ns, tmp_path.joinpath(uri).stat().st_mtime_ns) == stamp
    with pytest.raises(DataError, match="part 0 of 2 .* is not decoded"):
        assemble(str(root), str(tmp_path / "w"), str(tmp_path / "out"), cfg, 2)
    assert not (tmp_path / "out" / "manifest.json").exists()
    # Other settings or another cut decode again: the spool name carries what decided its content.
    assert decode_part(str(root), str(tmp_path / "w"), DataConfig(image_size=10), 1, 2) != uri
    with pytest.raises(ConfigError, match="part 2 of 2"):
        decode_part(str(root), str(tmp_path / "w"), cfg, 2, 2)


def test_plan_and_steps_fan_out_through_a_shared_work_folder(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=7)  # 21 files
    assert plan_parts(str(root), 5) == 5 and plan_parts(str(root), 100) == 1
    yaml = "data: {image_size: 8, files_per_part: 4}"
    parts = run_plan_preprocess(str(root), yaml)
    assert parts == list(range(6))
    source = source_fingerprint(str(root))
    for part in parts:
        run_preprocess_part(str(root), yaml, str(tmp_path / "w"), part, 0, source)
    out = run_preprocess_assemble(str(root), yaml, str(tmp_path / "w"), str(tmp_path / "out"), 0, source)
    assert out == run_preprocess(str(root), yaml, str(tmp_path / "one"), source)
    with pytest.raises(DataError, match="not decoded"):  # another source fingerprint: another spool folder
        run_preprocess_assemble(str(root), yaml, str(tmp_path / "w"), str(tmp_path / "x"), 6, "")
    assert out["counts"] and sum(out["counts"].values()) == 21 and out["fingerprint"]
    with pytest.raises(ConfigError, match="files_per_part"):
        Config.from_yaml("data: {files_per_part: 0}")


@pytest.mark.parametrize("n,shard_size", [(0, 4), (1, 4), (8, 4), (11, 4), (5, 100)])
def test_the_shard_writer_writes_the_bytes_of_write_split_shards(tmp_path, n, shard_size):
    rng = np.random.default_rng(n)
    arrays = SplitArrays(rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8), rng.integers(0, 5, n),
                         np.array([f"{i:016x}" for i in range(n)], dtype="<U16").reshape(n))
    expected = write_split_shards(str(tmp_path / "a"), "train", arrays, shard_size)
    writer = ImageShardWriter(str(tmp_path / "b"), "train", shard_size, (6, 6, 3))
    for start in range(0, n, 3):  # rows arrive in blocks that do not line up with the shards
        writer.add(arrays.images[start:start + 3], arrays.labels[start:start + 3], arrays.ids[start:start + 3])
    assert writer.close() == expected
    assert dataset_files(tmp_path / "b") == dataset_files(tmp_path / "a")


def _folder_of(root, n: int, size: int = 48):
    for i in range(n):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png_bytes(class_image(i % 2, seed=i, size=size)))
    return root


def _assemble_peak(tmp_path, n: int) -> int:
    root = _folder_of(tmp_path / f"d{n}", n)
    cfg = DataConfig(image_size=48, shard_size=8)
    work, parts = tmp_path / f"w{n}", n // 75  # parts of a fixed size, as preprocess cuts them
    for part in range(parts):
        decode_part(str(root), str(work), cfg, part, parts)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the images count
    try:
        assemble(str(root), str(work), str(tmp_path / f"out{n}"), cfg, parts)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_assemble_does_not_hold_the_dataset(tmp_path):
    # 48 px images are 6.9 kB each: 150 of them are 1 MB, 600 are 4 MB, and holding the train split
    # of the 450 more would add about 2 MB. What may grow is the metadata: the listing and a few
    # dozen bytes per file, about 350 bytes per file here.
    _assemble_peak(tmp_path, 75)  # first calls allocate caches (imports, regexes): not measured
    small, large = _assemble_peak(tmp_path, 150), _assemble_peak(tmp_path, 600)
    assert large - small < 450 * 1000, (small, large)
