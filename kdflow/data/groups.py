r"""Groups of near-duplicates, so that they land in one split (``data.group_by``).

A random split of a folder of video frames or tracks (30 photos of one traffic sign) puts frames of
one object in train and in validation, and validation then measures recall of the training set.
Grouping gives every sample a *group key*; the split is drawn per key (``kdflow.data.split``), so a
group never straddles two splits.

- ``none``: every sample is its own group, keyed by its content id.
- ``phash``: a 64-bit DCT perceptual hash of each decoded picture; pictures whose hashes differ in
  at most ``group_distance`` bits are linked, and the connected components (union-find) are the
  groups, keyed by their smallest sample id (a lone picture keeps its ``none`` key, hence its split).
- ``regex``: ``group_pattern`` is searched in the file's path relative to the data root; the key
  is the first capture group (the whole match when the pattern has none). A file the pattern does
  not match, or matches with empty text, is a group of its own. Keys are not scoped by class: where
  track numbers restart in every class folder, capture the folder too (``^train/(\d+/\d+)_``).

Linking is transitive: a chain of small steps (a slow pan) becomes one group, which is the point,
but a distance that is too large can chain unrelated pictures too; the step reports the largest
group so that shows.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kdflow.config import DataConfig
    from kdflow.data.split import SampleTable

PHASH = "phash-dct-64/1"  # names the hash below; part of the split spec, so a change re-keys datasets
_SIDE = 32  # the picture is area-resized to 32 x 32 grey ...
_LOW = 8  # ... and the 8 x 8 lowest DCT frequencies give the 64 bits


@dataclass(frozen=True)
class Grouping:
    keys: np.ndarray  # bytes (utf-8) per sample, in order: the key its split is drawn from
    count: int  # number of distinct groups
    largest: int  # samples in the largest group


def group_samples(samples: "SampleTable", cfg: "DataConfig", hashes: np.ndarray | None = None) -> Grouping:
    """The group key of every sample under ``cfg.group_by``; ``hashes`` (uint64 [M], the samples'
    ``phash``, computed where the pixels were decoded) are needed for ``phash``."""
    if cfg.group_by == "phash":
        if hashes is None:
            raise ValueError("group_by phash needs the samples' perceptual hashes")
        keys = phash_keys(samples, hashes, cfg.group_distance)
    elif cfg.group_by == "regex":
        keys = regex_keys(samples, cfg.group_pattern or "")
    else:
        keys = samples.ids
    _, sizes = np.unique(keys, return_counts=True)
    return Grouping(keys, len(sizes), int(sizes.max(initial=0)))


def regex_keys(samples: "SampleTable", pattern: str) -> np.ndarray:
    rx = re.compile(pattern)
    keys = []
    for rel, sid in zip(samples.rels.tolist(), samples.ids.tolist()):
        m = rx.search(rel.decode())
        text = (m.group(1) if rx.groups else m.group(0)) if m else None
        # "re:" keeps a captured text from ever equalling a content id (the key of an unmatched file).
        keys.append(f"re:{text}".encode() if text else sid)
    return np.array(keys, dtype=bytes).reshape(len(keys))


def phash_keys(samples: "SampleTable", hashes: np.ndarray, distance: int) -> np.ndarray:
    """Per sample: the smallest sample id of its near-duplicate component (its own id when alone)."""
    if not len(samples):
        return samples.ids
    labels = near_duplicate_labels(hashes, distance)
    order = np.lexsort((samples.ids, labels))  # by component, then id: each component's first is its smallest
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    smallest = np.zeros(int(labels.max()) + 1, np.int64)  # component label -> its smallest sample
    smallest[labels[order][first]] = order[first]
    return samples.ids[smallest[labels]]


def phash_batches(images: np.ndarray) -> np.ndarray:
    """``phash`` of uint8 pictures [N, H, W, 3] a batch at a time: ~100 MB of float64 grey per
    batch, whatever the image size."""
    if not len(images):
        return np.zeros(0, np.uint64)
    h, w = images.shape[1:3]
    step = max(1, (1 << 22) // (h * w))
    return np.concatenate([phash(images[i:i + step]) for i in range(0, len(images), step)])


# --- the perceptual hash ---------------------------------------------------------------------------


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: output cell i averages the input pixels it overlaps (box resampling, exact
    area weights; upsampling repeats pixels)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo = np.maximum(edges[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(1, n_in + 1)[None, :])
    w = np.clip(hi - lo, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the (unnormalised) n-point DCT-II basis."""
    u = np.arange(k)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * u / (2 * n))


def phash(images: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64 [N]) of uint8 pictures [N, H, W, 3].

    Grey (ITU-R 601 luma), area-resized to 32 x 32, 2-D DCT, the 8 x 8 lowest frequencies compared
    with their median: bit set where a coefficient is above it (the pHash of Zauner 2010, as the
    ``imagehash`` package computes it). Brightness moves only the DC term and contrast scales all
    terms alike, so neither changes the bits; small shifts, noise and recompression flip a few.
    The resize and the DCT are one matrix per axis, so a batch costs two small matrix products.
    """
    n, h, w, _ = images.shape
    grey = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    rows = _dct_rows(_SIDE, _LOW) @ _area_matrix(h, _SIDE)  # [8, H]
    cols = _dct_rows(_SIDE, _LOW) @ _area_matrix(w, _SIDE)  # [8, W]
    low = np.einsum("ah,nhw,bw->nab", rows, grey, cols, optimize=True).reshape(n, _LOW * _LOW)
    # Round before comparing: the hash decides splits and with them the dataset fingerprint, so it
    # must not depend on a BLAS's summation order. A flat region gives coefficients that are 0 up to
    # rounding noise, and the noise's sign would otherwise pick the bit.
    low = np.round(low, 6)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").reshape(n).astype(np.uint64)


# --- near-duplicate search: multi-index hashing, then union-find -----------------------------------


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(-1, 8)].sum(axis=1)


def _band_widths(m: int) -> list[int]:
    return [64 // m + (1 if j < 64 % m else 0) for j in range(m)]


def band_plan(n: int, distance: int) -> tuple[int, int]:
    """(bands m, probe radius r) for ``n`` distinct hashes within ``distance``.

    Two hashes within d bits, cut into m bands, agree within floor(d / m) bits on at least one band
    (pigeonhole: otherwise they differ in at least m * (floor(d/m) + 1) > d bits). So every close
    pair is found by looking up, per band, each hash's band value with up to r = floor(d / m) bits
    flipped. m = d + 1 is plain bucketing (r = 0, exact band matches), cheapest for small data; with
    many hashes, its narrow bands fill up (~ n^2 / 2^(64/(d+1)) candidate pairs), and fewer, wider
    bands probed with r = 1 or 2 cost less. The plan changes the speed, never the result.
    """
    def cost(m: int) -> float:
        r = distance // m
        total = 0.0
        for b in _band_widths(m):
            probes = sum(math.comb(b, i) for i in range(r + 1))
            total += probes * n * (1.0 + n / 2.0**b)  # lookups + expected candidates (uniform hashes)
        return total

    m = min(range(1, min(distance + 1, 64) + 1), key=cost)
    return m, distance // m


_PAIR_CHUNK = 1 << 22  # candidate pairs checked per numpy batch: bounds memory on crowded buckets


def close_pairs(
    hashes: np.ndarray, distance: int, plan: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of distinct ``hashes`` within ``distance`` bits, without comparing all
    pairs. ``plan`` (bands, radius) overrides ``band_plan``; it must satisfy bands * (radius + 1) > distance."""
    n = len(hashes)
    found: list[np.ndarray] = []
    if n >= 2:
        m, r = plan or band_plan(n, distance)
        if m * (r + 1) <= distance:
            raise ValueError(f"{m} bands probed within {r} bits can miss pairs {distance} bits apart")
        items = np.arange(n)
        shift = 0
        for width in _band_widths(m):
            band = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            shift += width
            order = np.argsort(band, kind="stable")
            sorted_band = band[order]
            for k in range(r + 1):
                for flipped in itertools.combinations(range(width), k):
                    probe = band ^ np.uint64(sum(1 << b for b in flipped))
                    lo = np.searchsorted(sorted_band, probe, side="left")
                    cnt = np.searchsorted(sorted_band, probe, side="right") - lo
                    found.extend(_verified(hashes, items, lo, cnt, order, distance))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = np.unique(np.concatenate(found))  # a pair found through several bands counts once
    return codes // n, codes % n


def _verified(hashes, items, lo, cnt, order, distance):
    """Expand each item's run of bucket mates, in chunks, and keep the close pairs as i * n + j codes."""
    n = len(hashes)
    keep = cnt > 0
    items, lo, cnt = items[keep], lo[keep], cnt[keep]
    ends = np.cumsum(cnt)
    start = 0
    while start < len(items):
        stop = max(int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _PAIR_CHUNK, "right")),
                   start + 1)
        c = cnt[start:stop]
        rep = np.repeat(np.arange(start, stop), c)
        offsets = np.arange(len(rep)) - np.repeat(np.cumsum(c) - c, c)
        i, j = items[rep], order[lo[rep] + offsets]
        ok = (i < j) & (popcount(hashes[i] ^ hashes[j]) <= distance)
        yield i[ok].astype(np.int64) * n + j[ok]
        start = stop


def near_duplicate_labels(hashes: np.ndarray, distance: int) -> np.ndarray:
    """Component label per hash: hashes linked by chains of steps of at most ``distance`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    uniq, inverse = np.unique(hashes, return_inverse=True)  # equal hashes: one node
    parent = list(range(len(uniq)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving
            a = parent[a]
        return a

    for a, b in zip(*(x.tolist() for x in close_pairs(uniq, distance))):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(a) for a in range(len(uniq))], dtype=np.int64)
    return roots[inverse.reshape(-1)]
