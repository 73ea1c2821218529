"""Near-duplicate grouping: the perceptual hash, the banded search, and groups that stay in one split."""

import json

import numpy as np
import pytest
from PIL import Image

from kdflow.config import Config, DataConfig
from kdflow.data.groups import band_plan, close_pairs, near_duplicate_labels, phash, popcount, regex_keys
from kdflow.data.preprocess import preprocess
from kdflow.data.split import SampleTable
from kdflow.util.errors import ConfigError
from kdflow.steps.preprocess import run_preprocess
from tests.helpers import make_image_folder, png_bytes

# --- the hash ------------------------------------------------------------------------------------


def _textured(rng, size: int = 128) -> Image.Image:
    """A random picture with detail at several scales (8 x 8 random colours, smoothly upsampled)."""
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)


def test_a_flat_picture_sets_only_the_dc_bit():
    # Every coefficient but the DC term is 0, so the median is 0 and only DC (the first bit) is above it.
    flat = np.full((2, 16, 16, 3), (10, 200, 90), np.uint8)
    assert phash(flat).tolist() == [1 << 63, 1 << 63]


def test_brightness_contrast_and_noise_barely_change_the_hash():
    rng = np.random.default_rng(0)
    pic = np.asarray(_textured(rng).resize((32, 32), Image.Resampling.BILINEAR)).astype(np.float64)
    variants = [pic, pic + 25, pic * 0.8, pic + rng.normal(0, 3, pic.shape)]
    h = phash(np.stack([np.clip(np.round(v), 0, 255).astype(np.uint8) for v in variants]))
    assert popcount(h[1:] ^ h[0]).max() <= 2
    others = phash(np.stack([np.asarray(_textured(rng).resize((32, 32))) for _ in range(50)]))
    assert popcount(others ^ h[0]).min() >= 12  # unrelated pictures: ~32 bits apart on average


# --- the banded search ----------------------------------------------------------------------------


def _brute_force(h: np.ndarray, d: int) -> set:
    dist = popcount(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(dist <= d, 1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("distance,plan", [(0, None), (3, None), (6, None), (6, (7, 0)), (6, (4, 1)),
                                           (6, (3, 2)), (10, (11, 0)), (10, (6, 1)), (16, None)])
def test_banded_search_finds_exactly_the_close_pairs(distance, plan):
    rng = np.random.default_rng(distance)
    base = rng.integers(0, 2**63, 200, dtype=np.uint64) << np.uint64(1)
    near = []
    for b in base[:120]:  # neighbours 0 .. distance + 2 bits away: some inside the radius, some just out
        x = int(b)
        for bit in rng.choice(64, int(rng.integers(0, distance + 3)), replace=False):
            x ^= 1 << int(bit)
        near.append(x)
    h = np.unique(np.concatenate([base, np.array(near, np.uint64)]))
    i, j = close_pairs(h, distance, plan)
    assert set(zip(i.tolist(), j.tolist())) == _brute_force(h, distance)


def test_band_plan_buckets_exactly_for_small_data_and_probes_wider_bands_for_big():
    assert band_plan(1000, 6) == (7, 0)  # 7 bands of 9-10 bits: two hashes within 6 bits share one
    assert band_plan(1_000_000, 6) in {(4, 1), (3, 2)}  # 16-bit bands, one flipped bit probed
    with pytest.raises(ValueError, match="can miss"):
        close_pairs(np.arange(4, dtype=np.uint64), 6, (3, 1))


def test_grouping_is_transitive():
    a = 0
    b = a ^ 0b111111  # 6 bits from a
    c = b ^ (0b111111 << 6)  # 6 bits from b, 12 from a
    far = (1 << 64) - 1
    labels = near_duplicate_labels(np.array([a, c, far, b, a], np.uint64), 6).tolist()
    assert labels[0] == labels[1] == labels[3] == labels[4] != labels[2]


# --- tracks through preprocess --------------------------------------------------------------------


def _track_frames(rng, n: int) -> list[np.ndarray]:
    """One physical object seen n times: rescaled as if approached (36..64 px), shifted by up to a
    pixel, brighter or darker by up to 20 levels, with sensor noise."""
    pic = _textured(rng)
    out = []
    for _ in range(n):
        dx, dy = (int(v) for v in rng.integers(0, 2, 2))
        side = int(rng.integers(36, 65))
        frame = np.asarray(pic.crop((dx, dy, 127 + dx, 127 + dy)).resize((side, side), Image.Resampling.BILINEAR))
        frame = frame + rng.uniform(-20, 20) + rng.normal(0, 3, frame.shape)
        out.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return out


def _tracks_folder(root, tracks_per_class: int = 6, frames: int = 5, singles: int = 10) -> dict[str, str]:
    """root/<class>/t<k>_<f>.png (tracks) and root/<class>/single<k>.png; returns rel path -> track."""
    rng = np.random.default_rng(0)
    track_of = {}
    for name in ("apple", "kiwi", "plum"):
        (root / name).mkdir(parents=True)
        for t in range(tracks_per_class):
            for f, frame in enumerate(_track_frames(rng, frames)):
                rel = f"{name}/t{t}_{f}.png"
                (root / rel).write_bytes(png_bytes(frame))
                track_of[rel] = f"{name}/t{t}"
        for k in range(singles):
            rel = f"{name}/single{k}.png"
            (root / rel).write_bytes(png_bytes(_track_frames(rng, 1)[0]))
            track_of[rel] = rel
    return track_of


def _split_by_rel(ds, root) -> dict[str, str]:
    """rel path -> split, through the content ids (sha256 of the file bytes)."""
    import hashlib

    by_id = {sid: s for s in ("train", "val", "test") for sid in ds.load_split(s).ids.tolist()}
    return {p.relative_to(root).as_posix(): by_id[hashlib.sha256(p.read_bytes()).hexdigest()[:16]]
            for p in root.rglob("*.png")}


def test_phash_keeps_the_frames_of_a_track_in_one_split(tmp_path):
    root = tmp_path / "d"
    track_of = _tracks_folder(root)
    cfg = DataConfig(image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0, group_by="phash")
    ds = preprocess(str(root), str(tmp_path / "out"), cfg)
    # 18 tracks of 5 frames and 30 unrelated pictures: 48 groups, none merged, none torn apart.
    assert ds.report.groups == 18 + 30 and ds.report.largest_group == 5
    where = _split_by_rel(ds, root)
    tracks: dict[str, set] = {}
    for rel, split in where.items():
        tracks.setdefault(track_of[rel], set()).add(split)
    assert all(len(splits) == 1 for splits in tracks.values())
    track_splits = [next(iter(v)) for k, v in tracks.items() if "/t" in k]
    single_splits = [next(iter(v)) for k, v in tracks.items() if "/t" not in k]
    assert set(track_splits) == set(single_splits) == {"train", "val", "test"}  # groups still spread

    # Without grouping, the same tracks are torn across splits: what the grouping is for.
    plain = _split_by_rel(preprocess(str(root), str(tmp_path / "plain"), DataConfig(
        image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0)), root)
    torn = {track_of[rel] for rel in plain if "/t" in rel
            if len({plain[r] for r in plain if track_of[r] == track_of[rel]}) > 1}
    assert len(torn) >= 9
    assert ds.spec.split == {"method": "sha256-unit/1", "val_fraction": 0.2, "test_fraction": 0.2,
                             "seed": 0, "group_by": "phash", "group_hash": "phash-dct-64/1",
                             "group_distance": 6}


def test_regex_groups_by_the_captured_text(tmp_path):
    root = tmp_path / "d"
    track_of = _tracks_folder(root, tracks_per_class=6, frames=3, singles=4)
    # Class folder and track number: the group. "single" files do not match: one group each.
    cfg = DataConfig(image_size=8, val_fraction=0.2, test_fraction=0.2, seed=0, group_by="regex",
                     group_pattern=r"^([^/]+/t\d+)_\d+\.png$")
    ds = preprocess(str(root), str(tmp_path / "out"), cfg)
    assert ds.report.groups == 18 + 12 and ds.report.largest_group == 3
    where = _split_by_rel(ds, root)
    for track in {t for t in track_of.values() if "/t" in t}:
        assert len({where[rel] for rel in where if track_of[rel] == track}) == 1
    assert ds.spec.split["group_pattern"] == r"^([^/]+/t\d+)_\d+\.png$"


def test_regex_key_is_the_first_group_else_the_whole_match():
    rels = ["a/x_1.png", "a/x_2.png", "b/x_1.png", "a/y.png", "a/_3.png"]
    samples = SampleTable.build([f"{i:016x}" for i in range(5)], [0] * 5, rels=rels)

    def keys(pattern):
        return [k.decode() for k in regex_keys(samples, pattern)]

    assert keys(r"(\w)_\d") == ["re:x", "re:x", "re:x", samples.id(3), samples.id(4)]
    assert keys(r"[ab]/x") == ["re:a/x", "re:a/x", "re:b/x", samples.id(3), samples.id(4)]
    # An empty capture names no group: the file stays on its own.
    assert keys(r"/(\w*)_")[:2] == ["re:x", "re:x"] and keys(r"/(\w*)_")[4] == samples.id(4)


def test_group_count_reaches_the_step_result_and_the_fingerprint_follows_the_setting(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=10)
    result = run_preprocess(str(root), "data: {image_size: 8, group_by: phash}", str(tmp_path / "a"))
    assert result["groups"] == 30 and sum(result["counts"][s] for s in ("train", "val", "test")) == 30
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    plain = run_preprocess(str(root), "data: {image_size: 8}", str(tmp_path / "b"))
    # The same 30 singleton groups and splits, but the spec names the grouping: another fingerprint.
    assert plain["groups"] == 30 and plain["counts"] == result["counts"]
    assert plain["fingerprint"] != result["fingerprint"] == manifest["fingerprint"]


@pytest.mark.parametrize("data,message", [
    ("{group_by: regex, group_pattern: '(unclosed'}", "data.group_pattern' is not a valid regular expression"),
    ("{group_by: regex}", "data.group_pattern' is not set but data.group_by is 'regex'"),
    ("{group_pattern: 'x'}", "data.group_pattern' is set but data.group_by is 'none'"),
    ("{group_by: phash, group_distance: 40}", "data.group_distance' is 40"),
    ("{group_by: dhash}", "one of 'none', 'phash', 'regex'"),
])
def test_bad_grouping_settings_are_refused_at_load(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(")):
        Config.from_yaml(f"data: {data}")
