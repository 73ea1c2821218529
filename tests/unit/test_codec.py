"""Golden-value tests for the top-k soft-label codec (kdflow.softlabels.codec)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdflow.util.errors import KdflowError
from kdflow.softlabels.codec import compress, decode, dense, encode

FIELDS = ("values", "index", "tail_lse", "tail_mean")


def _rebuild(c: dict[str, np.ndarray], num_classes: int, temperature: float = 1.0) -> torch.Tensor:
    return dense(*(torch.from_numpy(c[f]) for f in FIELDS), num_classes, temperature=temperature)


def _confident_logits(seed: int, n: int = 256, c: int = 1000, sd_lo: float = 1.0, sd_hi: float = 3.0) -> torch.Tensor:
    """Rows ~ N(0, s^2) with s ~ U(sd_lo, sd_hi) per row, plus one class boosted by U(12, 18)."""
    g = torch.Generator().manual_seed(seed)
    scale = sd_lo + (sd_hi - sd_lo) * torch.rand(n, 1, generator=g)
    z = torch.randn(n, c, generator=g) * scale
    cls = torch.randint(0, c, (n,), generator=g)
    z[torch.arange(n), cls] += 12 + 6 * torch.rand(n, generator=g)
    return z


def _old_dense(z: torch.Tensor, k: int) -> torch.Tensor:
    """Reference for the previous codec: fp16 top-k values, fp32 full-row lse, uniform tail carrying
    log(exp(lse) - sum(exp(top-k))) at T = 1, independent of the temperature."""
    values, index = torch.topk(z.float(), k, dim=-1)
    values = values.half().float()
    lse = torch.logsumexp(z.float(), dim=-1)
    top = torch.logsumexp(values, dim=-1)
    tail_mass = lse + torch.log1p(-torch.exp(top - lse).clamp(max=1 - 1e-6))
    tail = (tail_mass - math.log(z.shape[-1] - k)).unsqueeze(-1)
    return tail.expand_as(z).clone().scatter_(-1, index, values)


def _tail_stats(z: torch.Tensor, rebuilt: torch.Tensor, index: torch.Tensor, temperature: float):
    """Per row: true tail mass, rebuilt tail mass, KL(true || rebuilt), and the KL floor any
    top-k + uniform-tail codec must pay (tail mass * KL(true tail shape || uniform))."""
    p = torch.softmax(z.double() / temperature, -1)
    q = torch.softmax(rebuilt.double() / temperature, -1)
    keep = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, index.long(), True)
    true_mass = p.masked_fill(keep, 0).sum(-1)
    rebuilt_mass = q.masked_fill(keep, 0).sum(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    n_tail = z.shape[-1] - index.shape[-1]
    shape = p.masked_fill(keep, 0) / true_mass[:, None]
    kl_shape = (shape * (shape.clamp_min(1e-300).log() + math.log(n_tail))).masked_fill(keep, 0).sum(-1)
    return true_mass, rebuilt_mass, kl, true_mass * kl_shape


# --- interface -----------------------------------------------------------------------------------


def test_compress_shapes_and_dtypes():
    z = torch.randn(7, 50, generator=torch.Generator().manual_seed(0)).half()  # upcast to fp32
    c = compress(z, k=5)
    assert set(c) == set(FIELDS)
    assert c["values"].shape == (7, 5) and c["values"].dtype == np.float32
    assert c["index"].shape == (7, 5) and c["index"].dtype == np.int32
    assert c["tail_lse"].shape == (7,) and c["tail_lse"].dtype == np.float32
    assert c["tail_mean"].shape == (7,) and c["tail_mean"].dtype == np.float32
    top_v, top_i = torch.topk(z.float(), 5, dim=-1)
    np.testing.assert_array_equal(c["values"], top_v.numpy())  # exact, sorted largest first
    np.testing.assert_array_equal(c["index"], top_i.numpy())
    assert (np.diff(c["values"], axis=-1) <= 0).all()
    out = _rebuild(c, 50)
    assert out.dtype == torch.float32 and out.shape == (7, 50)


def test_values_kept_in_fp32_not_fp16():
    z = torch.tensor([[15.123456, 1.0, 0.5, 0.0]])
    c = compress(z, k=1)
    assert c["values"][0, 0] == np.float32(15.123456)  # fp16 would round this to 15.125
    assert _rebuild(c, 4)[0, 0].item() == np.float32(15.123456)


def test_empty_batch():
    for c_classes, k in ((10, 3), (3, 10)):
        c = compress(torch.zeros(0, c_classes), k=k)
        kk = min(k, c_classes)
        assert c["values"].shape == (0, kk) and c["index"].shape == (0, kk)
        assert c["tail_lse"].shape == (0,) and c["tail_mean"].shape == (0,)
        for t in (1.0, 4.0):
            assert _rebuild(c, c_classes, t).shape == (0, c_classes)


# --- 1. full rows are exact ------------------------------------------------------------------------


@pytest.mark.parametrize("c_classes,k", [(3, 10), (10, 10), (1, 4)])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_full_rows_exact(c_classes, k, temperature):
    z = torch.randn(16, c_classes, generator=torch.Generator().manual_seed(1)) * 5
    c = compress(z, k=k)
    np.testing.assert_array_equal(c["index"], np.broadcast_to(np.arange(c_classes, dtype=np.int32), (16, c_classes)))
    assert np.isneginf(c["tail_lse"]).all() and (c["tail_mean"] == 0).all()
    out = _rebuild(c, c_classes, temperature)
    assert torch.equal(out, z)  # fp32 bit-for-bit


def test_dense_scatters_permuted_full_rows_exactly():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 6, generator=g)
    index = torch.stack([torch.randperm(6, generator=g) for _ in range(4)]).to(torch.int32)
    values = torch.gather(z, 1, index.long())
    tail = torch.zeros(4)
    assert torch.equal(dense(values, index, tail - math.inf, tail, 6, temperature=3.0), z)


# --- 2. hand-computed case --------------------------------------------------------------------------


def test_hand_computed_tail():
    # C = 5, k = 2, logits [4, 3, 1, 0, -1] -> kept [4, 3] at [0, 1]; tail [1, 0, -1], n = 3.
    # tail_lse  = log(e^1 + e^0 + e^-1) = log(2.7182818 + 1 + 0.3678794) = log(4.0861613) = 1.4076060
    # tail_mean = (1 + 0 - 1) / 3 = 0
    # t_1 = 0 + (1.4076060 - log 3 - 0) / 1 = 1.4076060 - 1.0986123 = 0.3089937
    # t_4 = 0 + 0.3089937 / 4                                          = 0.0772484
    c = compress(torch.tensor([[4.0, 3.0, 1.0, 0.0, -1.0]]), k=2)
    np.testing.assert_array_equal(c["values"], [[4.0, 3.0]])
    np.testing.assert_array_equal(c["index"], [[0, 1]])
    assert c["tail_lse"][0] == pytest.approx(1.4076060, abs=1e-6)
    assert c["tail_mean"][0] == 0.0

    out1 = _rebuild(c, 5, 1.0)
    torch.testing.assert_close(out1, torch.tensor([[4.0, 3.0, 0.3089937, 0.3089937, 0.3089937]]), rtol=0, atol=1e-6)
    out4 = _rebuild(c, 5, 4.0)
    torch.testing.assert_close(out4, torch.tensor([[4.0, 3.0, 0.0772484, 0.0772484, 0.0772484]]), rtol=0, atol=1e-6)

    # T = 1: tail mass exact. 3 e^0.3089937 = e^1.4076060 = 4.0861613; with e^4 + e^3 = 74.6836870:
    # true = rebuilt = 4.0861613 / 78.7698483 = 0.0518747
    assert torch.softmax(out1, -1)[0, 2:].sum().item() == pytest.approx(0.0518747, abs=1e-6)
    # T = 4: true tail sum e^0.25 + 1 + e^-0.25 = 1.2840254 + 1 + 0.7788008 = 3.0628262, rebuilt
    # 3 e^(0.0772484 / 4) = 3 e^0.0193121 = 3 * 1.0194998 = 3.0584994 (Gaussian model, 0.14% low);
    # kept e^1 + e^0.75 = 2.7182818 + 2.1170000 = 4.8352818. Masses: true 3.0628262 / 7.8981080 =
    # 0.3877924, rebuilt 3.0584994 / 7.8937812 = 0.3874568 (0.09% low).
    p4 = torch.softmax(out4 / 4.0, -1)[0, 2:].sum().item()
    assert p4 == pytest.approx(0.3874568, abs=1e-6)
    assert p4 == pytest.approx(0.3877924, rel=2e-3)


def test_tail_value_tends_to_mean_at_high_temperature():
    z = torch.randn(8, 100, generator=torch.Generator().manual_seed(3)) * 2
    c = compress(z, k=5)
    out = _rebuild(c, 100, 1e6)
    keep = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, torch.from_numpy(c["index"]).long(), True)
    torch.testing.assert_close(out[~keep].view(8, 95)[:, 0], torch.from_numpy(c["tail_mean"]), rtol=0, atol=1e-4)


# --- 3. confident 1000-class teacher ------------------------------------------------------------------

# Measured on _confident_logits(0) (256 rows, k = 10; median top-1 probability 0.997, median tail
# mass 1.8e-3 at T = 1), relative tail-mass error |rebuilt - true| / true (softmax in float64):
#   T = 1: median 2.1e-7, max 7.3e-7   (old fp16 codec: median 0.78, i.e. factor 2.4; max factor 3.2e3)
#   T = 2: median 1.4e-2, max 1.3e-1   (Gaussian-tail model is weakest at intermediate T)
#   T = 4: median 7.6e-4, max 9.2e-3   (old codec, tail fixed at its T = 1 value: median 2.7e-2)
# KL(true || rebuilt): T = 1 mean 4.2e-2, max 0.79; T = 2 mean 0.196, max 0.62; T = 4 mean 0.106,
# max 0.23. Almost all of it is the unavoidable loss of the tail's shape (the same for any top-k +
# uniform-tail codec); the excess over that floor is max 3e-14 at T = 1, 2.9e-3 at T = 2 and 2.0e-4
# at T = 4 (old codec, mean excess: 1.8e-3, 0.19, 2.5e-2).
BOUNDS = {  # T: (median rel err, max rel err, max excess KL, mean KL)
    1.0: (1e-4, 1e-3, 1e-4, 0.15),
    2.0: (0.1, 0.5, 0.02, 0.5),
    4.0: (5e-3, 5e-2, 2e-3, 0.3),
}


@pytest.fixture(scope="module")
def confident():
    z = _confident_logits(0)
    c = compress(z, k=10)
    return z, c, torch.from_numpy(c["index"])


@pytest.mark.parametrize("temperature", sorted(BOUNDS))
def test_confident_tail_mass_and_kl(confident, temperature):
    z, c, index = confident
    true_mass, rebuilt_mass, kl, kl_floor = _tail_stats(z, _rebuild(c, 1000, temperature), index, temperature)
    rel = ((rebuilt_mass - true_mass).abs() / true_mass).numpy()
    med_bound, max_bound, excess_bound, mean_kl_bound = BOUNDS[temperature]
    assert np.median(rel) < med_bound
    assert rel.max() < max_bound
    assert (kl - kl_floor).max().item() < excess_bound
    assert kl.mean().item() < mean_kl_bound
    assert (kl >= kl_floor - 1e-6).all()  # sanity: the floor really is a lower bound


def test_confident_teacher_is_confident(confident):
    z, _, _ = confident
    p_top = torch.softmax(z, -1).max(-1).values
    assert p_top.median().item() > 0.99


def test_old_fp16_codec_was_far_worse(confident):
    z, c, index = confident
    # T = 1: the old codec's tail mass is a difference of two nearly equal numbers with fp16 inputs.
    true_mass, old_mass, _, _ = _tail_stats(z, _old_dense(z, 10), index, 1.0)
    _, new_mass, _, _ = _tail_stats(z, _rebuild(c, 1000, 1.0), index, 1.0)
    old_factor = torch.maximum(old_mass / true_mass, true_mass / old_mass)
    new_factor = torch.maximum(new_mass / true_mass, true_mass / new_mass)
    assert old_factor.median().item() > 1.5  # measured 2.4
    assert old_factor.max().item() > 100  # measured 3.2e3
    assert (new_factor - 1).median().item() < 1e-4
    # T = 4: the old tail ignored the temperature; its excess KL is two orders of magnitude larger.
    _, _, kl_old, floor = _tail_stats(z, _old_dense(z, 10), index, 4.0)
    _, _, kl_new, floor_new = _tail_stats(z, _rebuild(c, 1000, 4.0), index, 4.0)
    assert (kl_old - floor).mean().item() > 10 * (kl_new - floor_new).mean().item()


def test_old_codec_on_very_confident_teacher():
    # Tails ~ N(0, 1): median tail mass ~5e-4, the regime of the reported ~25x error.
    z = _confident_logits(1, sd_lo=1.0, sd_hi=1.0)
    index = torch.topk(z, 10, dim=-1).indices
    true_mass, old_mass, _, _ = _tail_stats(z, _old_dense(z, 10), index, 1.0)
    old_factor = torch.maximum(old_mass / true_mass, true_mass / old_mass)
    assert old_factor.median().item() > 5  # measured 11.4
    _, new_mass, _, _ = _tail_stats(z, _rebuild(compress(z, 10), 1000, 1.0), index, 1.0)
    assert ((new_mass - true_mass).abs() / true_mass).max().item() < 1e-3


# --- 4. top-1 is exact ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_top1_exact(confident, temperature):
    z, c, _ = confident
    out = _rebuild(c, 1000, temperature)
    assert torch.equal(out.argmax(-1), z.argmax(-1))
    assert torch.equal(out.max(-1).values, z.max(-1).values)


@pytest.mark.parametrize("sd", [0.1, 3.0])
def test_tail_never_above_kept_logits(sd):
    # Unconfident rows. For T >= 1 the tail value is <= log-mean-exp of the tail <= the k-th logit; for
    # T < 1 the Gaussian extrapolation mu + s2 / T could overshoot (with sd = 3 it passes the top-1 at
    # T = 0.25), so dense clamps it to the smallest kept logit, which the true value never exceeds.
    z = torch.randn(64, 1000, generator=torch.Generator().manual_seed(4)) * sd
    c = compress(z, k=10)
    kth = torch.from_numpy(c["values"][:, -1])
    keep = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, torch.from_numpy(c["index"]).long(), True)
    for t in (0.25, 0.5, 1.0, 4.0):
        out = _rebuild(c, 1000, t)
        assert torch.equal(out.argmax(-1), z.argmax(-1))
        assert (out[~keep].view(64, 990) <= kth[:, None]).all()


# --- 5. the stored encoding (float16 gaps from the top-1, uint indices) ---------------------------------

# KL(rebuilt from compress's float32 || rebuilt from the stored encoding), measured on
# _confident_logits(0): max 6e-8 / 4e-7 / 7e-8 at T = 1 / 2 / 4, unchanged with every logit + 40
# (float16 logits as such: 3e-6, and 8e-5 when offset by 40). Bound: 1e-5.
STORED_KL_BOUND = 1e-5


def _kl(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    p, q = (torch.log_softmax(x.double() / temperature, -1) for x in (a, b))
    return (p.exp() * (p - q)).sum(-1)


def test_stored_dtypes_and_sizes():
    for classes, index_dtype in ((10, np.uint8), (256, np.uint8), (1000, np.uint16)):
        z = torch.randn(5, classes, generator=torch.Generator().manual_seed(classes))
        stored = encode(compress(z, 4), classes)
        assert set(stored) == {"values", "index", "tail"}
        assert stored["values"].dtype == np.float16 and stored["values"].shape == (5, 4)
        assert stored["index"].dtype == index_dtype and stored["tail"].dtype == np.float16
        assert stored["tail"].shape == (5, 2)
        assert sum(a.nbytes for a in stored.values()) // 5 == 4 * 2 + 4 * np.dtype(index_dtype).itemsize + 4
    back = decode(encode(compress(torch.randn(3, 1000), 10), 1000), 1000)
    assert back["values"].dtype == np.float32 and back["index"].dtype == np.int64
    assert back["tail_lse"].dtype == np.float32 and back["tail_mean"].dtype == np.float32


@pytest.mark.parametrize("offset", [0.0, 40.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_stored_encoding_costs_little_kl(confident, offset, temperature):
    z = confident[0] + offset
    c = compress(z, k=10)
    stored = decode(encode(c, 1000), 1000)
    exact, rebuilt = _rebuild(c, 1000, temperature), _rebuild(stored, 1000, temperature)
    assert _kl(exact, rebuilt, temperature).max().item() < STORED_KL_BOUND
    assert torch.equal(rebuilt.argmax(-1), z.argmax(-1))  # the top-1 class is always exact
    np.testing.assert_array_equal(stored["index"], c["index"])
    # T = 1 tail mass: a - tail_lse is rounded to float16, a number of a few units: < 0.5%.
    index = torch.from_numpy(c["index"])
    true_mass, stored_mass, _, _ = _tail_stats(exact, rebuilt, index, 1.0)
    assert ((stored_mass - true_mass).abs() / true_mass).max().item() < 5e-3


@pytest.mark.parametrize("c_classes,k", [(3, 10), (10, 10), (1, 4)])
def test_stored_full_rows_exact_up_to_float16(c_classes, k):
    z = torch.randn(16, c_classes, generator=torch.Generator().manual_seed(1)) * 5
    stored = decode(encode(compress(z, k=k), c_classes), c_classes)
    assert np.isneginf(stored["tail_lse"]).all() and (stored["tail_mean"] == 0).all()
    out = _rebuild(stored, c_classes, 1.0)
    # The anchor (class 0) is rounded once, each gap from it once: within 2 float16 half-ulps of the row's scale.
    torch.testing.assert_close(out, z, rtol=0, atol=float(z.abs().max()) * 2 * 2 ** -10)
    assert torch.equal(out.argmax(-1), z.argmax(-1))


def test_encode_refuses_logits_beyond_float16():
    with pytest.raises(KdflowError, match="float16"):
        encode(compress(torch.tensor([[1e6, 0.0, -1.0]]), 2), 3)
