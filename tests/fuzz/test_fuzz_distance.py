"""Fuzz: the compiled EDT, ``edt_at``, ``signed_distance``, ``distance_field`` and the CPU ``edt_at``
options against scipy (``scipy.ndimage.distance_transform_edt``) on random shapes (size-0 and size-1 dims
included), batch dims, dtypes, memory layouts (torch and numpy, negative strides and big-endian among
them) and spacings (anisotropic, and far from 1). See ``_fuzz.py`` for the budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")
ndimage = pytest.importorskip("scipy.ndimage")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _fuzz import NUMPY_LAYOUTS, TORCH_LAYOUTS, fuzz_settings, numpy_layout, torch_layout  # noqa: E402
from fastloss import distance  # noqa: E402

MASK_DTYPES = (np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float32, np.float64)


@st.composite
def masks(draw, allow_empty=False):
    """(values, input, spatial_dims, spacing): a mask of 1-3 spatial dims and up to 2 batch dims."""
    sd = draw(st.integers(1, 3))
    nbatch = draw(st.integers(0, 2))
    lo = 0 if allow_empty else 1
    shape = tuple(draw(st.integers(1, 3)) for _ in range(nbatch)) + tuple(draw(st.integers(lo, 9)) for _ in range(sd))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    fg = rng.random(shape) < density
    dtype = draw(st.sampled_from(MASK_DTYPES))
    if np.dtype(dtype).kind == "f":
        values = np.where(fg, rng.choice([1.0, -0.5, 3.0, np.nan, np.inf], size=shape), rng.choice([0.0, -0.0], size=shape))
    elif dtype == np.bool_:
        values = fg
    else:
        values = np.where(fg, rng.integers(1, 100, size=shape), 0)
    values = values.astype(dtype)
    kind = draw(st.sampled_from(["numpy", "torch"]))
    if kind == "numpy":
        layout = draw(st.sampled_from(NUMPY_LAYOUTS))
        ref, arr = numpy_layout(values, layout, draw)
    else:
        layout = draw(st.sampled_from(TORCH_LAYOUTS))
        t = torch.from_numpy(values)
        ref_t, arr = torch_layout(t, layout, draw)
        ref = ref_t.numpy()
    spacing_kind = draw(st.sampled_from(["none", "one", "aniso", "extreme"]))
    if spacing_kind == "none":
        spacing = None
    elif spacing_kind == "one":
        spacing = draw(st.floats(0.1, 10.0))
    elif spacing_kind == "aniso":
        spacing = tuple(draw(st.floats(0.05, 20.0)) for _ in range(sd))
    else:
        # far from 1 (1e-25 .. 1e25) and up to 1e16 apart: within what the transform accepts (csrc/edt.h)
        e0 = draw(st.integers(-25, 25))
        spacing = tuple(10.0 ** (e0 + draw(st.integers(-8, 8))) * draw(st.floats(1.0, 3.0)) for _ in range(sd))
    return ref, arr, sd, spacing


def _reference(ref: np.ndarray, sd: int, spacing, squared=False) -> np.ndarray:
    """scipy per volume (float64); +inf for a volume without background (scipy's answer is undefined)."""
    shape = ref.shape
    spatial = shape[len(shape) - sd:]
    vols = (ref != 0).reshape((-1,) + spatial)
    sp = None if spacing is None else (spacing if isinstance(spacing, tuple) else (spacing,) * sd)
    out = np.empty(vols.shape, np.float64)
    for i, v in enumerate(vols):
        if v.all():
            out[i] = np.inf
        else:
            d = ndimage.distance_transform_edt(v, sampling=sp)
            out[i] = d * d if squared else d
    return out.reshape(shape)


def _check(got, want, exact: bool):
    got = got.numpy() if isinstance(got, torch.Tensor) else got
    assert got.dtype == np.float32 and got.shape == want.shape
    with np.errstate(over="ignore", under="ignore"):
        want32 = want.astype(np.float32)
    assert np.array_equal(np.isinf(got), np.isinf(want32)), "inf where the reference is finite, or the reverse"
    fin = np.isfinite(want32)
    if exact:  # unit spacing: sqrt of an exact integer, rounded once, as scipy's float64 result rounded
        assert np.array_equal(got[fin], want32[fin])
    else:
        np.testing.assert_allclose(got[fin], want32[fin], rtol=1e-6, atol=1e-44)


@fuzz_settings(80)
@given(masks(allow_empty=True), st.booleans())
def test_edt_matches_scipy(case, squared):
    ref, arr, sd, spacing = case
    if ref.size == 0:
        with pytest.raises(ValueError, match="empty"):
            distance.edt(arr, spacing, spatial_dims=sd)
        return
    got = distance.edt(arr, spacing, spatial_dims=sd, squared=squared)
    assert type(got) is type(arr)
    want = _reference(ref, sd, spacing, squared)
    exact = spacing is None and not squared
    if squared and spacing is not None:
        # float32 squares below float32's normal range are rounded subnormals; beyond it inf
        got_np = got.numpy() if isinstance(got, torch.Tensor) else got
        small = want < 1.2e-38
        want = np.where(small, got_np.astype(np.float64), want)
    _check(got, want, exact)


@fuzz_settings(60)
@given(masks(), st.data())
def test_edt_at_is_edt_at_the_query(case, data):
    ref, arr, sd, spacing = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    q = rng.random(ref.shape) < data.draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
    if isinstance(arr, torch.Tensor):
        _, query = torch_layout(torch.from_numpy(q), data.draw(st.sampled_from(["contiguous", "permuted", "padded"])), data.draw)
    else:
        _, query = numpy_layout(q, data.draw(st.sampled_from(["contiguous", "flipped", "stepped"])), data.draw)
    got = distance.edt_at(arr, query, spacing, spatial_dims=sd)
    full = _reference(ref, sd, spacing)
    _check(got, full[q], exact=spacing is None)


@fuzz_settings(50)
@given(masks())
def test_signed_distance_and_distance_field_match_their_formulas(case):
    ref, arr, sd, spacing = case
    if spacing is not None and not isinstance(spacing, tuple):
        spacing = (spacing,) * sd
    if spacing is not None and max(spacing) > 1e3 or spacing is not None and min(spacing) < 1e-3:
        spacing = None  # the maps' formulas (1 - d, d_G + d_S) are for ordinary spacings
    g = ref != 0
    shape = g.shape
    spatial = shape[len(shape) - sd:]
    phi = distance.signed_distance(arr, spacing, spatial_dims=sd)
    phi = phi.numpy() if isinstance(phi, torch.Tensor) else phi
    vols, pv = g.reshape((-1,) + spatial), phi.reshape((-1,) + spatial)
    for v, p in zip(vols, pv):
        if not v.any():
            assert (p == 0).all()
        elif v.all():
            assert np.isfinite(p).all() and (p <= 1).all()
        else:
            d_out = ndimage.distance_transform_edt(~v, sampling=spacing)
            d_in = ndimage.distance_transform_edt(v, sampling=spacing)
            want = np.where(v, 1.0 - d_in, d_out)
            np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-5)
    field = distance.distance_field(arr, spacing, spatial_dims=sd)  # MONAI's threshold: > 0.5
    field = field.numpy() if isinstance(field, torch.Tensor) else field
    with np.errstate(invalid="ignore"):
        fgv = ref if ref.dtype == np.bool_ else ref > 0.5
    for v, f in zip(fgv.reshape((-1,) + spatial), field.reshape((-1,) + spatial)):
        if v.all() or not v.any():
            assert (f == 0).all()
        else:
            want = ndimage.distance_transform_edt(v, sampling=spacing) + ndimage.distance_transform_edt(~v, sampling=spacing)
            np.testing.assert_allclose(f, want, rtol=1e-6, atol=1e-5)


@fuzz_settings(50)
@given(masks(), st.data())
def test_edt_at_cpu_options_match_scipy(case, data):
    """``features_nonzero`` (distances to the non-zeros) and ``max_distance`` (larger ones are inf), the
    surface metrics' calls, on uint8 (batch, *spatial) inputs."""
    ref, _, sd, spacing = case
    sp = [1.0] * sd if spacing is None else list(spacing if isinstance(spacing, tuple) else (spacing,) * sd)
    if max(sp) / min(sp) > 1e6:
        sp = [1.0] * sd
    spatial = ref.shape[ref.ndim - sd:]
    m = (ref != 0).reshape((-1,) + spatial)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    q = rng.random(m.shape) < 0.4
    fnz = data.draw(st.booleans())
    md = data.draw(st.sampled_from([math.inf, 0.0, 1.0, 1.5, 2.0, 4.0, 9.5]))
    md = md * min(sp) if math.isfinite(md) else md
    got = distance.edt_at_cpu(torch.from_numpy(m.view(np.uint8)), torch.from_numpy(q.view(np.uint8)), int(q.sum()), sp,
                              data.draw(st.sampled_from([1, 2])), fnz, md).numpy()
    inp = ~m if fnz else m  # edt measures to the zeros of its input: the features must be them
    want = np.empty(m.shape)
    for i, v in enumerate(inp):
        want[i] = np.inf if v.all() else ndimage.distance_transform_edt(v, sampling=sp)
    want = want[q]
    with np.errstate(over="ignore"):
        w32 = want.astype(np.float32)
    w32 = np.where(w32 > np.float32(md), np.inf, w32)
    with np.errstate(invalid="ignore"):  # at the cap itself, rounding decides
        near = np.isfinite(w32) & ~(np.abs(want - md) <= 1e-5 * max(1.0, md))
    assert np.array_equal(np.isinf(got[near | np.isinf(w32)]), np.isinf(w32[near | np.isinf(w32)]))
    np.testing.assert_allclose(got[near], w32[near], rtol=1e-6, atol=1e-30)
