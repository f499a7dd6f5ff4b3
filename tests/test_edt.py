"""The exact EDT (fastloss.edt) against scipy.ndimage.distance_transform_edt, the boundary-loss signed
map against a naive scipy composition of Kervadec's one_hot2dist, and the Hausdorff distance field
against MONAI's own HausdorffDTLoss.distance_field."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastloss.distance import distance_field, edt, hausdorff_distance_maps, signed_distance

RTOL = 1e-5


def scipy_edt(mask, spacing=None):
    """scipy per volume over the last nd dims; +inf for a volume without background (our convention)."""
    mask = np.asarray(mask) != 0
    return ndimage.distance_transform_edt(mask, sampling=spacing)


def scipy_batched(mask, sd, spacing=None):
    mask = np.asarray(mask) != 0
    lead = mask.shape[: mask.ndim - sd]
    flat = mask.reshape((-1,) + mask.shape[mask.ndim - sd :])
    out = np.stack([scipy_edt(v, spacing) if not v.all() else np.full(v.shape, np.inf) for v in flat])
    return out.reshape(lead + flat.shape[1:])


def assert_close(got, ref):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape
    assert np.array_equal(np.isinf(got), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=RTOL, atol=1e-6)


SHAPES = [(1,), (2,), (31,), (1, 1), (5, 1), (1, 7), (13, 9), (17, 23), (1, 1, 1), (7, 11, 5), (9, 1, 13), (15, 8, 11)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("aniso", [False, True])
def test_matches_scipy_random(shape, aniso):
    rng = np.random.default_rng(hash((shape, aniso)) % 2**32)
    spacing = tuple(rng.uniform(0.3, 3.0, len(shape))) if aniso else None
    for density in (0.05, 0.5, 0.97):
        mask = rng.random(shape) < density
        if mask.all():
            mask.flat[rng.integers(mask.size)] = False
        ref = scipy_edt(mask, spacing)
        assert_close(edt(mask, spacing), ref)
        assert_close(edt(mask, spacing, squared=True), ref**2)


def test_spheres_3d_anisotropic_long_axes():
    # long lines with large distances: the float64 envelope must not misorder near-ties
    zz, yy, xx = np.mgrid[:21, :40, :33]
    mask = ((zz - 10) ** 2 + (yy - 18) ** 2 + (xx - 16) ** 2) > 64
    for spacing in [(1.0, 1.0, 1.0), (2.5, 0.7, 1.3), 0.4]:
        assert_close(edt(mask, spacing), scipy_edt(mask, spacing if not np.isscalar(spacing) else (spacing,) * 3))


@pytest.mark.parametrize("sd", [1, 2, 3])
def test_batches_numpy_and_torch(sd):
    rng = np.random.default_rng(sd)
    shape = (2, 3) + (7, 6, 5)[:sd]
    mask = rng.random(shape) < 0.7
    mask[0, 0] = True  # a volume without background: inf
    mask[1, 2] = False  # a volume of background only: zeros
    spacing = (1.5, 0.5, 2.0)[:sd]
    ref = scipy_batched(mask, sd, spacing)
    got_np = edt(mask, spacing, spatial_dims=sd)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float32
    assert_close(got_np, ref)
    got_t = edt(torch.from_numpy(mask), spacing, spatial_dims=sd)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
    assert_close(got_t.numpy(), ref)
    assert np.isinf(got_np[0, 0]).all() and (got_np[1, 2] == 0).all()


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.uint8, np.int32, np.int64, np.float32, np.float64, torch.int16, torch.float16, torch.bool]
)
def test_mask_dtypes_nonzero_is_foreground(dtype):
    rng = np.random.default_rng(3)
    vals = rng.integers(-2, 3, (6, 7)).astype(np.float64)  # negative values are foreground too
    ref = scipy_edt(vals != 0)
    if isinstance(dtype, torch.dtype):
        m = torch.from_numpy(vals).to(dtype)
        got = edt(m).numpy()
    else:
        got = edt(vals.astype(dtype))
    assert_close(got, ref)


def test_noncontiguous_inputs():
    rng = np.random.default_rng(4)
    base = rng.random((9, 10, 11)) < 0.6
    view = base[::2, :, ::3].transpose(2, 0, 1)
    assert_close(edt(view), scipy_edt(view))
    t = torch.from_numpy(base).permute(2, 1, 0)[1:, ::2]
    assert_close(edt(t).numpy(), scipy_edt(t.numpy()))


def test_default_spatial_dims_is_last_three():
    rng = np.random.default_rng(5)
    mask = rng.random((2, 5, 6, 7)) < 0.8
    assert_close(edt(mask), scipy_batched(mask, 3))


def test_all_foreground_inf_all_background_zero():
    assert np.isinf(edt(np.ones((4, 5, 6)))).all()
    assert (edt(np.zeros((4, 5, 6))) == 0).all()
    assert np.isinf(edt(torch.ones(7)).numpy()).all()
    # a single zero voxel: finite everywhere
    m = np.ones((5, 6, 7))
    m[4, 0, 6] = 0
    assert_close(edt(m, (1.0, 2.0, 0.5)), scipy_edt(m, (1.0, 2.0, 0.5)))


def test_threads_give_identical_results():
    rng = np.random.default_rng(6)
    mask = rng.random((3, 33, 34, 35)) < 0.9  # large enough (>32k voxels) to run threaded
    one = edt(mask, (1.0, 0.8, 1.7), threads=1)
    two = edt(mask, (1.0, 0.8, 1.7), threads=2)
    auto = edt(mask, (1.0, 0.8, 1.7))
    assert np.array_equal(one, two) and np.array_equal(one, auto)
    assert_close(two[1], scipy_edt(mask[1], (1.0, 0.8, 1.7)))


def test_torch_compile_and_opcheck():
    m = (torch.rand(2, 6, 7) > 0.3).to(torch.uint8)
    torch.library.opcheck(torch.ops.fastloss.edt, (m, [1.0, 2.0], False, 1))
    f = torch.compile(lambda x: edt(x, (1.0, 2.0), spatial_dims=2, squared=True) * 2, fullgraph=True)
    ref = scipy_batched(m.numpy(), 2, (1.0, 2.0)) ** 2 * 2
    assert_close(f(m).numpy(), ref)


# --------------------------------------------------------------------------------------------------
# signed distance (boundary loss)


def kervadec_naive(seg, spacing=None):
    """one_hot2dist of Kervadec et al. for one volume, written with scipy."""
    pos = seg.astype(bool)
    if not pos.any():
        return np.zeros(seg.shape)
    neg = ~pos
    return ndimage.distance_transform_edt(neg, sampling=spacing) * neg - (
        ndimage.distance_transform_edt(pos, sampling=spacing) - 1
    ) * pos


@pytest.mark.parametrize("shape,spacing", [((12,), None), ((9, 11), None), ((9, 11), (0.5, 2.0)), ((6, 7, 8), (1.0, 1.5, 0.8))])
def test_signed_distance_matches_kervadec(shape, spacing):
    rng = np.random.default_rng(len(shape))
    masks = rng.random((3,) + shape) < 0.4
    masks[1] = False  # absent class: zeros
    got = signed_distance(torch.from_numpy(masks), spacing, spatial_dims=len(shape))
    assert got.dtype == torch.float32
    for b in range(3):
        np.testing.assert_allclose(got[b].numpy(), kervadec_naive(masks[b], spacing), rtol=RTOL, atol=1e-5)
    assert (got[1] == 0).all()
    got_np = signed_distance(masks.astype(np.float32), spacing, spatial_dims=len(shape))
    assert isinstance(got_np, np.ndarray) and np.array_equal(got_np, got.numpy())


def test_signed_distance_all_foreground_is_edge_distance():
    # all foreground: as if surrounded by background, -(d_edge - 1), d_edge to the nearest outside centre
    got = signed_distance(np.ones((5, 4)), (2.0, 1.0))
    padded = np.pad(np.ones((5, 4)), 1)
    d_edge = ndimage.distance_transform_edt(padded, sampling=(2.0, 1.0))[1:-1, 1:-1]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, 1.0 - d_edge, rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# Hausdorff distance field (MONAI)


def test_distance_field_matches_monai():
    monai_hd = pytest.importorskip("monai.losses.hausdorff_loss")
    rng = np.random.default_rng(9)
    for spatial in [(9, 10), (6, 7, 5)]:
        img = (rng.random((2, 3) + spatial) < 0.4).astype(np.float32)
        img[0, 1] = 1.0  # all foreground: skipped (0)
        img[1, 2] = 0.0  # all background: skipped (0)
        t = torch.from_numpy(img)
        loss = monai_hd.HausdorffDTLoss()
        ref = torch.cat([loss.distance_field(t[:, [c]].double()) for c in range(3)], dim=1).numpy()
        got = distance_field(t)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), ref, rtol=RTOL, atol=1e-6)
        assert (got[0, 1] == 0).all() and (got[1, 2] == 0).all()


def test_hausdorff_maps_are_sum_of_powered_fields():
    rng = np.random.default_rng(10)
    p = torch.rand(2, 2, 7, 8) > 0.5
    g = torch.from_numpy(rng.random((2, 2, 7, 8)) < 0.3)
    fp = np.stack([[scipy_edt(v) + scipy_edt(~v) if v.any() and not v.all() else 0 * v for v in b] for b in p.numpy()])
    fg = np.stack([[scipy_edt(v) + scipy_edt(~v) if v.any() and not v.all() else 0 * v for v in b] for b in g.numpy()])
    got = hausdorff_distance_maps(p, g, alpha=2.0)
    np.testing.assert_allclose(got.numpy(), fp**2 + fg**2, rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# bad input: each a ValueError/TypeError naming what was expected and what came


@pytest.mark.parametrize(
    "call,exc,words",
    [
        (lambda: edt([[1, 0]]), TypeError, "torch.Tensor or a numpy.ndarray"),
        (lambda: edt(torch.zeros(3, 4, dtype=torch.complex64)), TypeError, "complex64"),
        (lambda: edt(np.array([["a", "b"]])), TypeError, "dtype"),
        (lambda: edt(np.zeros((0, 4))), ValueError, "empty"),
        (lambda: edt(torch.zeros(())), ValueError, "0-dim"),
        (lambda: edt(np.ones((3, 4)), (1.0, 2.0, 3.0)), ValueError, "got 3"),
        (lambda: edt(np.ones((3, 4)), (1.0, 0.0)), ValueError, "positive"),
        (lambda: edt(np.ones((3, 4)), -1.0), ValueError, "positive"),
        (lambda: edt(np.ones((3, 4)), spatial_dims=3), ValueError, "got 3"),
        (lambda: edt(np.ones((3, 4, 5, 6)), spatial_dims=4), ValueError, "got 4"),
        (lambda: edt(np.ones((3, 4)), spatial_dims=1.5), TypeError, "float"),
        (lambda: edt(np.ones((3, 4)), threads=-1), ValueError, "got -1"),
        (lambda: signed_distance(np.ones((3, 4)), (1.0,)), ValueError, "got 1"),
        (lambda: distance_field(torch.ones(3, 4)), ValueError, "(B, C, *spatial)"),
        (lambda: hausdorff_distance_maps(torch.ones(1, 1, 3), torch.ones(1, 1, 4)), ValueError, "same shape"),
    ],
)
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=None) as info:
        call()
    assert words in str(info.value)
