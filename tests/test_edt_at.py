"""fastloss.distance.edt_at (the EDT read at query voxels) and its CPU core edt_at_cpu, against
scipy.ndimage.distance_transform_edt (float64, per volume) read at the query voxels.

The C++ search (csrc/edt_query_cpu.cpp) has several code paths, each exercised here with inputs built to
reach it: the sorted-offset search for queries near a zero; the brute-force tail for queries more than
24 voxels from any zero along the two outer axes; the full-transform fallback of a volume whose queries
exceed the work budget; the direct ball search of a small finite max_distance; and the pass-1 search
capped at a larger max_distance. Unit spacing must match float32(scipy) bit for bit (distances are
square roots of integers); other spacings to float32 rounding.
"""

import math
import sys
import zlib

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastloss import _ext
from fastloss.distance import edt, edt_at, edt_at_cpu

RTOL = 1e-6
INF = float("inf")
MAX_BALL = 343  # a max_distance ball with at most this many voxel offsets is searched directly


def seed(*key):
    return zlib.crc32(repr(key).encode())


# --------------------------------------------------------------------------------------------------
# references


def ref_volume(vol, spacing=None, features_nonzero=False):
    """float64 distance of every voxel to the nearest feature voxel (zeros of vol, or its non-zeros with
    features_nonzero); +inf everywhere for a volume without any feature (scipy is undefined there)."""
    vol = np.asarray(vol) != 0
    inp = ~vol if features_nonzero else vol  # scipy: distance of each non-zero of inp to the nearest zero
    if inp.all():
        return np.full(inp.shape, np.inf)
    return ndimage.distance_transform_edt(inp, sampling=spacing)


def ref_at(mask, query, sd, spacing=None, features_nonzero=False):
    """The reference read at the non-zero voxels of query, in C order over all dims (batch first)."""
    mask, query = np.asarray(mask), np.asarray(query)
    spatial = mask.shape[mask.ndim - sd :]
    vols = mask.reshape((-1,) + spatial)
    full = np.stack([ref_volume(v, spacing, features_nonzero) for v in vols])
    return full[(query != 0).reshape(full.shape)]


def u8(a, sd):
    """(batch, *spatial) contiguous uint8 tensor of a != 0."""
    a = np.asarray(a) != 0
    return torch.from_numpy(np.ascontiguousarray(a.reshape((-1,) + a.shape[a.ndim - sd :]))).view(torch.uint8)


def core(mask, query, sd, spacing=None, threads=1, features_nonzero=False, max_distance=INF, count=None):
    """edt_at_cpu on numpy inputs; returns a numpy float32 array."""
    m, q = u8(mask, sd), u8(query, sd)
    if count is None:
        count = int(np.count_nonzero(query))
    sp = [1.0] * sd if spacing is None else [float(s) for s in spacing]
    out = edt_at_cpu(m, q, count, sp, threads, features_nonzero, max_distance)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.ndim == 1
    return out.numpy()


def as_np(got):
    return got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)


def assert_exact(got, ref):
    got = as_np(got)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref.astype(np.float32))


def assert_close(got, ref):
    got = as_np(got)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.array_equal(np.isinf(got), np.isinf(ref))
    fin = np.isfinite(ref)
    assert np.isfinite(got[fin]).all()
    np.testing.assert_allclose(got[fin], ref[fin], rtol=RTOL, atol=0)


def assert_matches(got, ref, exact):
    (assert_exact if exact else assert_close)(got, ref)


def assert_capped(got, ref, md, exact):
    """got == ref where float32(ref) <= float32(md), +inf elsewhere. Not exact (non-dyadic spacing): a
    reference within float32 rounding of md may land either side, so those are only checked loosely."""
    got = as_np(got)
    assert got.dtype == np.float32 and got.shape == ref.shape
    ref32, md32 = ref.astype(np.float32), np.float32(md)
    inside = ref32 <= md32
    if exact:
        np.testing.assert_array_equal(got, np.where(inside, ref32, np.float32(np.inf)))
        return
    sure = np.abs(ref - md) > 4e-6 * max(md, 1e-30)
    assert np.isinf(got[sure & ~inside]).all()
    np.testing.assert_allclose(got[sure & inside], ref[sure & inside], rtol=RTOL, atol=0)
    amb = ~sure
    assert (np.isinf(got[amb]) | np.isclose(got[amb], ref[amb], rtol=RTOL, atol=0)).all()


def ball_path(spatial, spacing, md):
    """Whether edt_at_cpu answers max_distance md with the direct ball search (test design check only):
    the ball of offsets of length <= md, within the volume's extent, holds at most MAX_BALL offsets."""
    nd = len(spatial)
    n = (1,) * (3 - nd) + tuple(spatial)
    s = (1.0,) * (3 - nd) + (tuple(spacing) if spacing is not None else (1.0,) * nd)
    r = [min(n[a] - 1, int(math.floor(md / s[a]))) for a in range(3)]
    if np.prod([2 * x + 1 for x in r]) > 8 * MAX_BALL:
        return False
    g = np.meshgrid(*[np.arange(-x, x + 1) * sa for x, sa in zip(r, s)], indexing="ij")
    return int(np.count_nonzero(g[0] ** 2 + g[1] ** 2 + g[2] ** 2 <= md * md)) <= MAX_BALL


# --------------------------------------------------------------------------------------------------
# hand-computed values


def test_hand_computed_1d_and_2d():
    got = edt_at(torch.tensor([[1, 1, 0, 1]]), torch.tensor([[1, 0, 1, 1]]), spatial_dims=1)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert got.tolist() == [2.0, 0.0, 1.0]
    m = np.ones((3, 3), np.uint8)
    m[1, 1] = 0
    q = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    got = edt_at(m, q, (2.0, 1.0))
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    # C order: (0,0) (0,1) (1,0) (1,1) (2,2)
    np.testing.assert_allclose(got, [math.sqrt(5), 2.0, 1.0, 0.0, math.sqrt(5)], rtol=RTOL)
    # features_nonzero: distance to the centre's one non-zero voxel of the inverted mask
    got = core(1 - m, q, 2, (2.0, 1.0), features_nonzero=True)
    np.testing.assert_allclose(got, [math.sqrt(5), 2.0, 1.0, 0.0, math.sqrt(5)], rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# the search path against scipy: random masks, 1D to 3D, unit and anisotropic spacing


CASES = [
    ((1,), None),
    ((2,), None),
    ((31,), None),
    ((31,), (0.7,)),
    ((1, 1), None),
    ((13, 9), None),
    ((13, 9), (0.7, 1.3)),
    ((40, 7), None),  # 2D with an outer axis longer than the sorted table reaches
    ((40, 7), (1.3, 0.7)),
    ((1, 1, 1), None),
    ((7, 11, 5), None),
    ((9, 1, 13), None),
    ((15, 8, 11), None),
    ((15, 8, 11), (0.7, 1.3, 2.1)),
    ((15, 8, 11), (0.1, 1.0, 1.0)),
    ((15, 8, 11), (3.0, 1.0, 0.2)),
    ((30, 28, 6), None),
    ((30, 28, 6), (0.7, 1.3, 2.1)),
    ((30, 28, 6), (0.1, 1.0, 1.0)),
    ((30, 28, 6), (3.0, 1.0, 0.2)),
]


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_matches_scipy_random(shape, spacing, kind):
    rng = np.random.default_rng(seed(shape, spacing, kind))
    exact = spacing is None
    for density in (0.3, 0.9, 0.995):  # foreground fraction: the last leaves few (or no) zeros
        mask = rng.random(shape) < density
        query = rng.random(shape) < 0.4
        ref = ref_at(mask, query, len(shape), spacing)
        m, q = (mask, query) if kind == "numpy" else (torch.from_numpy(mask), torch.from_numpy(query))
        got = edt_at(m, q, spacing)
        assert isinstance(got, np.ndarray if kind == "numpy" else torch.Tensor)
        assert_matches(got, ref, exact)
        full = as_np(edt(m, spacing))[query]
        if exact:
            assert np.array_equal(as_np(got), full)  # bit for bit equal to the full transform
        else:
            assert_close(got, full.astype(np.float64))


@pytest.mark.parametrize("spacing", [0.5, (0.5, 2.0, 1.0)])
def test_dyadic_spacing_is_exact(spacing):
    # spacings that are powers of two keep every squared distance exact: float32(scipy) bit for bit
    rng = np.random.default_rng(seed("dyadic", spacing))
    mask = rng.random((2, 14, 13, 12)) < 0.97
    query = rng.random(mask.shape) < 0.5
    sp = (spacing,) * 3 if np.isscalar(spacing) else spacing
    assert_exact(edt_at(mask, query, spacing), ref_at(mask, query, 3, sp))


@pytest.mark.parametrize(
    "shape,sd",
    [((2, 3, 9, 10), 2), ((2, 2, 5, 6, 7), 3), ((3, 4, 17), 1), ((2, 3, 5, 6, 7), None), ((4, 2, 3, 5, 6), 2)],
)
def test_batch_dims(shape, sd):
    rng = np.random.default_rng(seed("batch", shape, sd))
    mask = rng.random(shape) < 0.85
    query = rng.random(shape) < 0.5
    lead = mask.reshape((-1,) + shape[len(shape) - (sd or 3) :])
    qlead = query.reshape(lead.shape)
    lead[0] = True  # a volume without zero: inf
    lead[1] = False  # all zeros: 0
    qlead[2] = False  # a volume with no query
    qlead[0] = True
    qlead[1] = True
    eff_sd = sd or 3
    ref = ref_at(mask, query, eff_sd)
    got = edt_at(mask, query, spatial_dims=sd)
    assert_exact(got, ref)
    assert np.array_equal(got, edt(mask, spatial_dims=sd)[query])
    vol = int(np.prod(shape[len(shape) - eff_sd :]))
    assert np.isinf(got[:vol]).all() and (got[vol : 2 * vol] == 0).all()
    got_t = edt_at(torch.from_numpy(mask), torch.from_numpy(query), spatial_dims=sd)
    assert isinstance(got_t, torch.Tensor) and np.array_equal(got_t.numpy(), got)


# --------------------------------------------------------------------------------------------------
# the brute-force tail: queries more than 24 voxels from every zero along both outer axes


TAIL_SPACINGS = [None, (0.7, 1.3, 2.1), (0.1, 1.0, 1.0), (3.0, 1.0, 0.2)]


def tail_volume():
    """(2, 70, 70, 8): volume 0 has one zero in a corner, volume 1 two zeros; a handful of queries far from
    them (a few thousand lookups each, well inside the work budget), a band 24 to ~31 voxels out, and
    queries next to the zeros."""
    mask = np.ones((2, 70, 70, 8), bool)
    mask[0, 0, 0, 0] = False
    mask[1, 0, 69, 7] = False
    mask[1, 40, 2, 0] = False
    query = np.zeros_like(mask)
    query[:, 69, 69, :] = True  # the far corner
    query[:, 66:69, 60, 3] = True
    query[0, 24:31, 0, 0] = True  # distances 24 .. 30 along dz
    query[0, 0, 30, 0] = True  # 30 along dy
    query[0, 0, 30, 1] = True  # sqrt(901)
    query[0, 18, 24, 0] = True  # 30 exactly (18, 24)
    query[0, 18, 24, 5] = True
    query[0, 1:3, 1:3, :2] = True  # near the zero
    query[1, 40, 0:5, 0:3] = True
    query[1, 1, 66:70, 4:8] = True
    return mask, query


@pytest.mark.parametrize("spacing", TAIL_SPACINGS)
def test_far_queries_brute_force_tail(spacing):
    mask, query = tail_volume()
    ref = ref_at(mask, query, 3, spacing)
    assert ref.max() > 60 * min(spacing or (1.0,))  # far queries really are far
    got = edt_at(mask, query, spacing)
    assert_matches(got, ref, spacing is None)
    one = core(mask, query, 3, spacing, threads=1)
    two = core(mask, query, 3, spacing, threads=2)
    assert np.array_equal(one, two) and np.array_equal(one, got)


@pytest.mark.parametrize("spacing", TAIL_SPACINGS)
def test_far_queries_brute_force_tail_capped(spacing):
    # a cap beyond the table's reach: the tail runs, limited to offsets within max_distance
    mask, query = tail_volume()
    md = 30.0
    assert not ball_path(mask.shape[1:], spacing, md)
    ref = ref_at(mask, query, 3, spacing)
    got = core(mask, query, 3, spacing, max_distance=md)
    assert_capped(got, ref, md, spacing is None)
    ref32 = ref.astype(np.float32)
    assert (ref32 <= md).any() and (np.isfinite(ref32) & (ref32 > md)).any()
    if spacing is None:
        assert (ref32 == 30.0).sum() >= 3 and (ref32 > 24).sum() >= 10  # boundary and tail queries present


def test_brute_force_tail_2d_and_one_long_axis():
    # 2D (outer axis of 1 voxel), and 3D with only the middle axis beyond the table
    m2 = np.ones((2, 90, 6), bool)
    m2[0, 0, 0] = False
    m2[1, 45, 5] = False
    q2 = np.zeros_like(m2)
    q2[:, 89, :] = True
    q2[:, 60, 3] = True
    q2[:, 30, 0] = True
    q2[:, 1, 1] = True
    for spacing in (None, (1.3, 0.7)):
        assert_matches(edt_at(m2, q2, spacing, spatial_dims=2), ref_at(m2, q2, 2, spacing), spacing is None)
    m3 = np.ones((10, 70, 8), bool)
    m3[9, 0, 7] = False
    q3 = np.zeros_like(m3)
    q3[:, 69, ::3] = True
    q3[0, 26:40:3, 0] = True
    q3[8, 1, 6] = True
    for spacing in (None, (0.7, 1.3, 2.1)):
        assert_matches(edt_at(m3, q3, spacing), ref_at(m3, q3, 3, spacing), spacing is None)


# --------------------------------------------------------------------------------------------------
# the work budget: volumes whose queries are far from every zero fall back to the full transform


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3, 2.1)])
def test_budget_fallback_single_zero_all_queries(spacing):
    mask = np.ones((40, 40, 40), bool)
    mask[3, 5, 7] = False
    query = np.ones_like(mask)
    ref = ref_at(mask, query, 3, spacing)
    got = edt_at(mask, query, spacing)
    assert_matches(got, ref, spacing is None)
    assert np.array_equal(core(mask, query, 3, spacing, threads=1), core(mask, query, 3, spacing, threads=2))


def mixed_budget_batch():
    """(4, 40, 40, 40): 0 falls back (one zero, every voxel a query), 1 is searched (dense zeros, every voxel
    a query), 2 has no zero (inf), 3 has one zero and a few queries (searched, some via the tail)."""
    rng = np.random.default_rng(seed("mixed"))
    mask = np.ones((4, 40, 40, 40), bool)
    mask[0, 3, 5, 7] = False
    mask[1] = rng.random((40, 40, 40)) < 0.8
    mask[3, 20, 20, 20] = False
    query = np.zeros_like(mask)
    query[:3] = True
    query[3, ::13, ::13, ::7] = True
    return mask, query


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3, 2.1)])
def test_budget_fallback_mixed_batch(spacing):
    mask, query = mixed_budget_batch()
    ref = ref_at(mask, query, 3, spacing)
    got = edt_at(mask, query, spacing)
    assert_matches(got, ref, spacing is None)
    vol = 40**3
    assert np.isinf(got[2 * vol : 3 * vol]).all() and np.isfinite(got[: 2 * vol]).all()
    one = core(mask, query, 3, spacing, threads=1)
    two = core(mask, query, 3, spacing, threads=2)
    auto = as_np(edt_at(torch.from_numpy(mask), torch.from_numpy(query), spacing))
    assert np.array_equal(one, two) and np.array_equal(one, auto) and np.array_equal(one, got)


def test_budget_fallback_features_nonzero_and_capped():
    mask, query = mixed_budget_batch()
    inv = ~mask  # the same features, as non-zeros
    ref = ref_at(inv, query, 3, None, features_nonzero=True)
    assert np.array_equal(ref, ref_at(mask, query, 3))  # the references agree with each other
    for threads in (1, 2):
        assert_exact(core(inv, query, 3, threads=threads, features_nonzero=True), ref)
        got = core(inv, query, 3, threads=threads, features_nonzero=True, max_distance=9.5)
        assert_capped(got, ref, 9.5, exact=True)
        got = core(mask, query, 3, (0.7, 1.3, 2.1), threads=threads, max_distance=9.5)
        assert_capped(got, ref_at(mask, query, 3, (0.7, 1.3, 2.1)), 9.5, exact=False)
    assert (ref[: 40**3] > 9.5).any()  # the cap matters in the fallback volume


# --------------------------------------------------------------------------------------------------
# special volumes and queries


@pytest.mark.parametrize("shape", [(7,), (5, 6), (4, 5, 6)])
def test_no_zero_empty_query_all_zero(shape):
    ones, zeros = np.ones(shape, np.uint8), np.zeros(shape, np.uint8)
    sd = len(shape)
    got = edt_at(ones, ones)
    assert got.shape == (ones.size,) and np.isinf(got).all()
    got = edt_at(torch.from_numpy(ones), torch.from_numpy(ones))
    assert isinstance(got, torch.Tensor) and torch.isinf(got).all()
    got = edt_at(zeros, ones, 0.7)
    assert got.shape == (ones.size,) and (got == 0).all()
    got = edt_at(ones, zeros)
    assert isinstance(got, np.ndarray) and got.shape == (0,) and got.dtype == np.float32
    got = edt_at(torch.from_numpy(ones), torch.from_numpy(zeros))
    assert isinstance(got, torch.Tensor) and got.shape == (0,) and got.dtype == torch.float32
    for md in (INF, 1.5, 1e6):  # search, ball, capped search
        assert np.isinf(core(ones, ones, sd, max_distance=md)).all()
        assert (core(zeros, ones, sd, max_distance=md) == 0).all()
        assert np.isinf(core(zeros, ones, sd, features_nonzero=True, max_distance=md)).all()
        assert (core(ones, ones, sd, features_nonzero=True, max_distance=md) == 0).all()
        assert core(ones, zeros, sd, max_distance=md).shape == (0,)


def test_max_distance_zero_and_huge():
    rng = np.random.default_rng(seed("md0"))
    mask = rng.random((2, 9, 10, 11)) < 0.9
    query = rng.random(mask.shape) < 0.6
    ref = ref_at(mask, query, 3)
    got = core(mask, query, 3, max_distance=0.0)  # only the zeros themselves
    assert np.array_equal(got, np.where(ref == 0, 0.0, np.inf).astype(np.float32))
    assert (got == 0).any() and np.isinf(got).any()
    for md in (1e6, INF):
        assert_exact(core(mask, query, 3, max_distance=md), ref)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    "md,spacing", [(1e19, None), (1e30, None), (sys.float_info.max, None), (1.0, (1e-19, 1.0, 1.0))]
)
def test_max_distance_huge_or_tiny_spacing(md, spacing):
    mask = np.ones((6, 7, 5), bool)
    mask[0, 0, 0] = False
    query = np.ones_like(mask)
    ref = ref_at(mask, query, 3, spacing)
    assert np.isfinite(ref).all()
    assert_capped(core(mask, query, 3, spacing, max_distance=md), ref, md, exact=spacing is None)


# --------------------------------------------------------------------------------------------------
# max_distance: the ball search (small caps) and the capped pass-1 search (larger ones)


MD_CASES = [
    # 3D: radius <= 4 is a small ball, 5 and 9.5 are searched
    ((2, 12, 13, 14), None, 1.0, True),
    ((2, 12, 13, 14), None, math.sqrt(2), True),
    ((2, 12, 13, 14), None, 1.5, True),
    ((2, 12, 13, 14), None, 2.0, True),
    ((2, 12, 13, 14), None, math.sqrt(3), True),
    ((2, 20, 21, 22), None, 5.0, False),
    ((2, 20, 21, 22), None, 9.5, False),
    ((2, 12, 13, 14), (0.7, 1.3, 2.1), 1.5, True),
    ((2, 12, 13, 14), (0.7, 1.3, 2.1), 2.0, True),
    ((2, 20, 21, 22), (0.7, 1.3, 2.1), 9.5, False),
    ((2, 12, 13, 14), (0.1, 1.0, 1.0), 1.0, True),
    ((2, 20, 21, 22), (0.1, 1.0, 1.0), 9.5, False),
    ((2, 12, 13, 14), (3.0, 1.0, 0.2), 2.0, True),
    ((2, 20, 21, 22), (3.0, 1.0, 0.2), 9.5, False),
    ((2, 12, 13, 14), (0.5, 2.0, 1.0), 1.0, True),  # dyadic: exact, 1.0 achievable
    ((2, 20, 21, 22), (0.5, 2.0, 1.0), 6.0, False),
    # 2D: radius 9.5 is still a ball there, 11 is not
    ((3, 40, 37), None, 9.5, True),
    ((3, 40, 37), None, 11.0, False),
    ((3, 40, 37), (0.7, 1.3), 9.5, True),
    # 1D
    ((4, 50), None, 20.0, True),
    ((4, 600), None, 180.0, False),
]


@pytest.mark.parametrize("shape,spacing,md,ball", MD_CASES)
@pytest.mark.parametrize("features_nonzero", [False, True])
def test_max_distance(shape, spacing, md, ball, features_nonzero):
    sd = len(shape) - 1
    assert ball_path(shape[1:], spacing, md) == ball  # the case reaches the path it is meant for
    rng = np.random.default_rng(seed(shape, spacing, md, features_nonzero))
    size = int(np.prod(shape[1:]))
    zeros_per_volume = max(1, int(size / (4 * md**sd)))  # typical distances around md
    mask = np.ones(shape, bool)
    for b in range(shape[0]):
        mask[b].flat[rng.choice(size, zeros_per_volume, replace=False)] = False
    mask[-1] = True  # a volume without feature
    query = rng.random(shape) < 0.7
    exact = spacing is None or spacing == (0.5, 2.0, 1.0)
    m = ~mask if features_nonzero else mask  # features_nonzero: the zeros become the non-zeros
    ref = ref_at(m, query, sd, spacing, features_nonzero=features_nonzero)
    assert np.array_equal(ref, ref_at(mask, query, sd, spacing))
    got = core(m, query, sd, spacing, max_distance=md, features_nonzero=features_nonzero)
    assert_capped(got, ref, md, exact)
    ref32 = ref.astype(np.float32)
    assert (ref32 <= np.float32(md)).any() and (np.isfinite(ref) & (ref32 > np.float32(md))).any()
    achievable = [np.float32(x) for x in (1.0, 2.0, 5.0, math.sqrt(2), math.sqrt(3))]
    if exact and np.float32(md) in achievable:
        assert (ref32 == np.float32(md)).any()  # the inclusive boundary is really tested
    if features_nonzero:  # same features either way: the same answer
        assert np.array_equal(got, core(mask, query, sd, spacing, max_distance=md))


def test_max_distance_boundary_is_inclusive():
    # every voxel at an exactly achievable distance from a single zero: sqrt(2) (as a float) and 2.0 are kept
    mask = np.ones((9, 9, 9), bool)
    mask[4, 4, 4] = False
    query = np.ones_like(mask)
    ref = ref_at(mask, query, 3)
    for md in (1.0, math.sqrt(2), 2.0, math.sqrt(3), math.sqrt(5), math.sqrt(8), 3.0, 5.0):  # ball, then search
        got = core(mask, query, 3, max_distance=md)
        keep = ref.astype(np.float32) <= np.float32(md)
        assert np.array_equal(got[keep], ref[keep].astype(np.float32))
        assert np.isinf(got[~keep]).all()
        assert (got == np.float32(md)).any()  # voxels exactly at md are returned, not inf
        below = core(mask, query, 3, max_distance=float(np.nextafter(np.float32(md), np.float32(0))))
        assert np.isinf(below[ref.astype(np.float32) == np.float32(md)]).all()


# --------------------------------------------------------------------------------------------------
# features_nonzero, no cap


@pytest.mark.parametrize("shape,spacing", [((3, 40), None), ((2, 17, 23), (0.7, 1.3)), ((2, 15, 8, 11), None),
                                           ((2, 30, 28, 6), (0.7, 1.3, 2.1)), ((2, 30, 28, 6), (3.0, 1.0, 0.2))])
def test_features_nonzero(shape, spacing):
    rng = np.random.default_rng(seed("fnz", shape, spacing))
    sd = len(shape) - 1
    for density in (0.02, 0.3):  # fraction of non-zero (feature) voxels
        mask = rng.random(shape) < density
        mask[-1] = False  # no feature: inf
        query = rng.random(shape) < 0.5
        ref = ref_at(mask, query, sd, spacing, features_nonzero=True)
        got = core(mask, query, sd, spacing, features_nonzero=True)
        assert_matches(got, ref, spacing is None)
        assert np.isinf(got[-int(np.count_nonzero(query[-1])) :]).all()


# --------------------------------------------------------------------------------------------------
# threads


def test_threads_bit_identical():
    rng = np.random.default_rng(seed("threads"))
    mask = rng.random((2, 32, 33, 34)) < 0.97  # > 32k voxels: runs threaded
    query = rng.random(mask.shape) < 0.5
    sp = (1.0, 0.8, 1.7)
    one = edt_at(mask, query, sp, threads=1)
    assert np.array_equal(one, edt_at(mask, query, sp, threads=2))
    assert np.array_equal(one, edt_at(mask, query, sp))
    assert_close(one, ref_at(mask, query, 3, sp))
    for fnz in (False, True):
        m = ~mask if fnz else mask
        for md in (1.5, 9.5, INF):
            a = core(m, query, 3, sp, threads=1, features_nonzero=fnz, max_distance=md)
            b = core(m, query, 3, sp, threads=2, features_nonzero=fnz, max_distance=md)
            assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# inputs: dtypes, layouts, kinds


@pytest.mark.parametrize(
    "mdtype,qdtype",
    [(np.bool_, np.bool_), (np.uint8, np.float32), (np.int64, np.int8), (np.float64, np.bool_),
     (np.float16, np.uint16), (torch.bool, torch.bool), (torch.int16, torch.float32), (torch.float16, torch.uint8)],
)
def test_dtypes_nonzero_is_foreground(mdtype, qdtype):
    rng = np.random.default_rng(seed("dtypes", str(mdtype), str(qdtype)))
    vals = rng.integers(-2, 3, (3, 6, 7)).astype(np.float64)  # negative values are non-zero too
    qvals = rng.integers(-1, 2, vals.shape).astype(np.float64)
    ref = ref_at(vals, qvals, 3)
    if isinstance(mdtype, torch.dtype):
        got = edt_at(torch.from_numpy(vals).to(mdtype), torch.from_numpy(qvals).to(qdtype))
        assert isinstance(got, torch.Tensor)
    else:
        got = edt_at(vals.astype(mdtype), qvals.astype(qdtype))
        assert isinstance(got, np.ndarray)
    assert_exact(got, ref)


@pytest.mark.parametrize("dtype", [np.longdouble, np.dtype(">f4"), np.dtype(">i2")])
def test_numpy_dtypes_that_edt_accepts(dtype):
    rng = np.random.default_rng(seed("dtype2", str(dtype)))
    mask = (rng.random((5, 6, 7)) < 0.8).astype(dtype)
    query = (rng.random((5, 6, 7)) < 0.5).astype(dtype)
    assert np.array_equal(edt_at(mask, query), edt(mask)[query != 0])


def test_noncontiguous_inputs():
    rng = np.random.default_rng(seed("noncontig"))
    base = rng.random((9, 10, 11)) < 0.8
    qbase = rng.random((9, 10, 11)) < 0.5
    view, qview = base[::2, :, ::3].transpose(2, 0, 1), qbase[::2, :, 1::3].transpose(2, 0, 1)
    assert_exact(edt_at(view, qview), ref_at(view, qview, 3))
    t = torch.from_numpy(base).permute(2, 1, 0)[1:, ::2]
    qt = torch.from_numpy(qbase).permute(2, 0, 1)[1:, :, ::2].transpose(1, 2)
    assert t.shape == qt.shape
    got = edt_at(t, qt, (0.7, 1.3, 2.1))
    assert_close(got, ref_at(t.numpy(), qt.numpy(), 3, (0.7, 1.3, 2.1)))
    t4 = torch.from_numpy(rng.random((3, 8, 9)) < 0.8).permute(1, 0, 2)  # batch dim not outermost in memory
    q4 = torch.ones_like(t4)
    assert_exact(edt_at(t4, q4, spatial_dims=1), ref_at(t4.numpy(), q4.numpy(), 1))


# --------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "call,exc,words",
    [
        (lambda: edt_at(np.ones((3, 4)), np.ones((4, 3))), ValueError, "shape"),
        (lambda: edt_at(np.ones((3, 4)), np.ones((1, 3, 4))), ValueError, "shape"),
        (lambda: edt_at(torch.ones(3, 4), torch.ones(12)), ValueError, "shape"),
        (lambda: edt_at(np.ones((3, 4)), torch.ones(3, 4)), TypeError, "same kind"),
        (lambda: edt_at(torch.ones(3, 4), np.ones((3, 4))), TypeError, "same kind"),
        (lambda: edt_at([[1, 0]], [[1, 1]]), TypeError, "torch.Tensor or a numpy.ndarray"),
        (lambda: edt_at(np.ones((3, 4)), [[1, 1]]), TypeError, "torch.Tensor or a numpy.ndarray"),
        (lambda: edt_at(np.ones((3, 4)), np.ones((3, 4)), (1.0, 2.0, 3.0)), ValueError, "got 3"),
        (lambda: edt_at(np.ones((3, 4)), np.ones((3, 4)), spatial_dims=3), ValueError, "got 3"),
        (lambda: edt_at(np.ones((3, 4)), np.ones((3, 4)), threads=-1), ValueError, "got -1"),
        (lambda: edt_at(np.zeros((0, 4)), np.zeros((0, 4))), ValueError, "empty"),
    ],
)
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


@pytest.mark.parametrize("md", [INF, 1.5])  # the search and the ball paths
@pytest.mark.parametrize("delta", [-7, -1, 1])
def test_wrong_count_raises_before_writing(md, delta):
    rng = np.random.default_rng(seed("count", md, delta))
    mask = rng.random((2, 6, 7, 8)) < 0.8
    query = rng.random(mask.shape) < 0.5
    n = int(np.count_nonzero(query))
    with pytest.raises(ValueError) as info:
        core(mask, query, 3, max_distance=md, count=n + delta)
    assert str(n) in str(info.value) and str(n + delta) in str(info.value)
    # the extension itself, with a sentinel buffer larger than either count: nothing may be written
    m, q = u8(mask, 3), u8(query, 3)
    buf = torch.full((n + 20,), -7.0)
    with pytest.raises(ValueError, match=str(n)):
        _ext.require("test").edt_query_cpu(m.data_ptr(), q.data_ptr(), buf.data_ptr(), n + delta, 2, [6, 7, 8], [1.0] * 3,
                             False, md, 1)
    assert (buf == -7.0).all()
    # the right count works through the same call
    _ext.require("test").edt_query_cpu(m.data_ptr(), q.data_ptr(), buf.data_ptr(), n, 2, [6, 7, 8], [1.0] * 3, False, md, 1)
    assert_capped(buf[:n].numpy(), ref_at(mask, query, 3), md, exact=True)
    assert (buf[n:] == -7.0).all()


@pytest.mark.parametrize("spacing", [None, (1.0, 0.5)])
def test_long_lines(spacing):
    # lines longer than 46340 voxels: squared distances beyond int32 and beyond float32's exact integers
    # (2^24), so 2D sums are only float32-accurate; 1D distances (integers times 0.5) stay exact
    rng = np.random.default_rng(seed("long", spacing))
    mask = np.ones((2, 3, 46500), bool)
    mask[0, 1, 17] = False
    mask[0, 2, 46499] = False
    mask[1, 0, 0] = False
    query = rng.random(mask.shape) < 0.05
    query[:, :, [0, 46499]] = True
    ref = ref_at(mask, query, 2, spacing)
    assert ref.max() > 46340 * (0.5 if spacing else 1.0)
    assert_close(edt_at(mask, query, spacing, spatial_dims=2), ref)
    assert_close(core(~mask, query, 2, spacing, features_nonzero=True), ref)
    for md in (9.5, 2000.0):
        assert_capped(core(mask, query, 2, spacing, max_distance=md), ref, md, exact=False)
    sp1 = spacing and spacing[1:]
    m1, q1 = mask[:, 0], query[:, 0]
    assert_exact(edt_at(m1, q1, sp1, spatial_dims=1), ref_at(m1, q1, 1, sp1))
