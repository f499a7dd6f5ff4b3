"""Memory safety and robustness of the compiled code (issue 24): each test here failed on the code before
that issue's fixes (the reproducers the sanitizer and fuzz runs found).

- Lovász ``valid`` masks of another shape are refused instead of read past their end (fix 1);
- an allocation failure inside a kernel's parallel region is a ``MemoryError``, not an abort, and the
  distance functions' ``threads=`` is capped (fix 2);
- ``ignore_index`` outside int64 on the compiled path (fix 3), out-of-range labels under
  ``FASTLOSS_CHECK_LABELS=0`` normalised as ignored voxels on both backends (fix 4);
- EDT spacings far from 1 (fix 5), numpy masks with negative strides on size-1 axes (fix 6);
- no int64 copy of bool masks in the EDT (fix 7), no input-sized gather buffer in the TopK select (fix 8);
  (fix 9, a −inf logit, is in ``test_nonfinite.py``).

The tests that set an address-space limit (``RLIMIT_AS``, as ``ulimit -v``) or measure peak memory run in
a subprocess; they are skipped under the sanitizer build (ASan reserves terabytes of address space).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastloss
from fastloss import _ext
from fastloss import distance
from fastloss.distance import distance_field, edt, edt_at, hausdorff_distance_maps, signed_distance
from fastloss.ops import cpu_stats
from fastloss.ops.lovasz import lovasz_extension

pytestmark = pytest.mark.skipif(_ext.C is None, reason="fastloss._C is not built")

SANITIZED = os.environ.get("FASTLOSS_SANITIZE") == "1" or "libasan" in os.environ.get("LD_PRELOAD", "")
needs_plain_build = pytest.mark.skipif(
    SANITIZED or not sys.platform.startswith("linux"),
    reason="address-space limits and peak-memory readings need Linux and a build without ASan",
)


def _subprocess(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (the tests' environment, one thread per core at most)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# helpers for the subprocesses: the address space now (VmSize), a limit above it, the peak RSS since a reset
_PRELUDE = """
import os, resource, sys
import numpy as np
import torch
torch.set_num_threads(2)
import fastloss
from fastloss import _ext
C = _ext.C

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

def limit_address_space(extra_bytes):
    # the soft limit only (ulimit -Sv): the process can lift it again
    lim = status("VmSize") + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (lim, resource.getrlimit(resource.RLIMIT_AS)[1]))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")
"""


def _expect_memory_error(body: str, timeout: float = 300) -> None:
    r = _subprocess(_PRELUDE + textwrap.dedent(body), timeout)
    assert r.returncode == 0, (
        f"the interpreter died (return code {r.returncode}: -6 is SIGABRT, std::terminate) instead of raising "
        f"MemoryError\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    )
    assert "RAISED MemoryError" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# fix 1: the Lovász mask


def test_lovasz_valid_of_another_shape_is_refused():
    errors = torch.rand(64, 4096, requires_grad=True)
    fg = (torch.rand(64, 4096) > 0.5).float()
    with pytest.raises(ValueError, match="valid must have the errors' shape"):
        lovasz_extension(errors, fg, torch.ones(1, 4096, dtype=torch.bool))  # was read 64 times past its end
    with pytest.raises(ValueError, match="valid must have"):
        lovasz_extension(errors, fg, torch.ones(64, 4095, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        lovasz_extension(errors, fg, torch.ones(64, 4096))
    # the compiled op itself (torch.ops.fastloss.cpu_lovasz) refuses it too, float32 and float64 rows alike
    from fastloss.ops import cpu_lovasz  # noqa: F401  (registers the op)

    for dt in (torch.float32, torch.float64):
        with pytest.raises((ValueError, RuntimeError), match="one shape"):
            torch.ops.fastloss.cpu_lovasz(errors.detach().to(dt), fg.to(dt), torch.ones(1, 4096, dtype=torch.bool))
    # the right shape, and a broadcast mask expanded to it, still work
    full = torch.rand(64, 4096) > 0.1
    a = lovasz_extension(errors, fg, full)
    b = lovasz_extension(errors, fg, full[:1].expand(64, 4096))
    c = lovasz_extension(errors, fg, full[:1].expand(64, 4096).contiguous())
    assert a.shape == (64,) and torch.equal(b, c)


# --------------------------------------------------------------------------------------------------
# fix 2: exceptions inside parallel regions, and the threads cap


@needs_plain_build
def test_allocation_failure_in_an_edt_parallel_region_is_a_memory_error():
    # a (4M, 17) volume: the pass along axis 0 runs 2 tiles of 16 lines on 2 threads, each of which needs a
    # 512 MiB tile buffer; with 256 MiB of address space left they cannot have it
    _expect_memory_error("""
        n0, n1 = 1 << 22, 17
        mask = np.ones((n0, n1), np.uint8); mask[::1000] = 0
        out = np.empty((n0, n1), np.float32)
        limit_address_space(256 << 20)
        try:
            C.edt_cpu(mask.ctypes.data, out.ctypes.data, 1, [n0, n1], [1.0, 1.0], False, 2)
            print("NO ERROR")
        except MemoryError:
            print("RAISED MemoryError")
        # the process lives on and the kernels still work
        resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
        small = np.ones((40, 50), np.uint8); small[3, 4] = 0
        got = fastloss.edt(small, threads=2)
        assert abs(float(got[0, 0]) - (9 + 16) ** 0.5) < 1e-6
    """)


@needs_plain_build
def test_allocation_failure_in_lovasz_rows_is_a_memory_error():
    # 2 rows of 16M elements on 2 threads: each row's radix sort needs 256 MiB that are not there
    _expect_memory_error("""
        R, P = 2, 1 << 24
        e = torch.rand(R, P); g = (torch.rand(R, P) > 0.5).float()
        loss = torch.empty(R); d = torch.empty(R, P)
        limit_address_space(192 << 20)
        try:
            C.lovasz_cpu(e.data_ptr(), g.data_ptr(), 0, R, P, 4, loss.data_ptr(), d.data_ptr(), 2)
            print("NO ERROR")
        except MemoryError:
            print("RAISED MemoryError")
    """)


@needs_plain_build
def test_threads_far_above_the_cores_are_capped():
    # threads=4000 used to start 4000 OpenMP threads (8 MiB of stack each): under a 1 GiB address-space
    # allowance libgomp could not create them and ended the process
    r = _subprocess(_PRELUDE + textwrap.dedent("""
        from fastloss.distance import edt, edt_at
        mask = np.ones((48, 50, 52), bool); mask[::7, 3, 5] = False
        want = edt(mask, threads=1)
        limit_address_space(1 << 30)
        got = edt(mask, threads=4000)
        at = edt_at(mask, mask, threads=30000)
        assert np.array_equal(got, want) and np.array_equal(at, want[mask])
        print("THREADS", len(os.listdir("/proc/self/task")), os.cpu_count())
    """))
    assert r.returncode == 0, f"return code {r.returncode}\n{r.stdout[-1000:]}\n{r.stderr[-2000:]}"
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("THREADS")][-1]
    tasks, cap = map(int, line.split()[1:])
    assert cap == (os.cpu_count() or 1)
    assert tasks <= cap + 8  # the OpenMP pool (at most max_threads()) and a few of the interpreter's


def test_threads_argument_is_documented_and_reduced_to_the_maximum():
    from fastloss.distance import _check_threads

    assert distance.max_threads() == max(1, os.cpu_count() or 1)
    assert _check_threads(10**6) == distance.max_threads() and _check_threads(None) == 0 and _check_threads(1) == 1
    assert "max_threads" in edt.__doc__ and "reduced" in edt.__doc__
    mask = np.ones((20, 21), bool)
    mask[4, 5] = False
    assert np.array_equal(edt(mask, threads=10**6), edt(mask, threads=1))


# --------------------------------------------------------------------------------------------------
# fix 3: ignore_index outside int64


@pytest.mark.parametrize("ignore_index", [2**63, -(2**63) - 1, 2**64, 10**30])
@pytest.mark.parametrize("name", ["CrossEntropyLoss", "DiceCELoss", "DiceLoss", "TopKLoss", "DiceFocalLoss"])
def test_ignore_index_outside_int64_ignores_nothing(name, ignore_index, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 6, generator=gen)
    y = torch.randint(0, 3, (2, 1, 5, 6), generator=gen)
    kw = {} if name in ("CrossEntropyLoss", "TopKLoss") else {"to_onehot_y": True, "softmax": True}
    cls = getattr(fastloss, name)
    got = cls(ignore_index=ignore_index, **kw)(x, y)  # compiled: was "Unable to cast Python instance"
    # the same as an ignore_index no label holds (not as None: with ignore_index the focal terms are
    # normalised by the counted voxels, MONAI's convention)
    plain = cls(ignore_index=10**6, **kw)(x, y)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref = cls(ignore_index=ignore_index, **kw)(x, y)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, plain, rtol=0, atol=0)


def test_compiled_kernels_take_any_python_integer_as_ignore_index():
    x = torch.randn(2, 3, 40)
    lab = torch.randint(0, 3, (2, 40))
    lab[:, ::5] = 255
    want = cpu_stats.voxel_ce_cpu(x, lab, 255)
    assert torch.equal(cpu_stats.voxel_ce_cpu(x, lab, np.int64(255)), want)  # numpy integers (__index__)
    assert torch.equal(cpu_stats.voxel_ce_cpu(x, lab, 2**63), cpu_stats.voxel_ce_cpu(x, lab, None))
    out = torch.empty(2, 40)
    args = (cpu_stats._view(x), cpu_stats._view(lab), 2, 3, 40)
    _ext.C.voxel_ce_cpu_forward(*args, 2**70, out.data_ptr(), 1)  # the binding itself: nothing ignored
    assert torch.equal(out, cpu_stats.voxel_ce_cpu(x, lab, None))
    with pytest.raises(TypeError):
        _ext.C.voxel_ce_cpu_forward(*args, 255.0, out.data_ptr(), 1)


# --------------------------------------------------------------------------------------------------
# fix 4: out-of-range labels with the label check off are ignored voxels, on every backend


@pytest.mark.parametrize("use_softmax", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_out_of_range_labels_and_ignore_index_normalise_alike(use_softmax, reduction, backend, monkeypatch):
    """The documented rule (fastloss/_validation.py): with ``FASTLOSS_CHECK_LABELS=0`` the kernels treat
    out-of-range labels as ignored voxels. The focal loss's normalisation (the number of counted voxels)
    must follow it on the torch backend too: the loss equals the loss with those labels set to
    ignore_index (the compiled path gave 1.2546, the torch backend 1.0118 on this input)."""
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    y[0, 0, 0, :] = 7
    y[1, 0, 1, :2] = -5
    y[1, 0, 2, 0] = 255
    clean = y.clone()
    clean[(y < 0) | (y >= 3)] = 255
    kw = dict(use_softmax=use_softmax, ignore_index=255, reduction=reduction, to_onehot_y=True)
    got = fastloss.FocalLoss(**kw)(x, y)
    want = fastloss.FocalLoss(**kw)(x, clean)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    dfl = dict(ignore_index=255, to_onehot_y=True, softmax=True, use_softmax=True)
    torch.testing.assert_close(fastloss.DiceFocalLoss(**dfl)(x, y), fastloss.DiceFocalLoss(**dfl)(x, clean),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# fix 5: spacings far from 1


EXTREME_SPACINGS = [
    (1e20, 1e20, 1e20), (1e-20, 1e-20, 1e-20), (1.0, 1.0, 1e-25), (1e-25, 1.0, 1.0), (1.0, 1e-25, 1.0),
    (1e30, 2e30, 3e30), (3e-30, 1e-30, 1.0), (1e-30, 1e-10, 1e10), (1e19, 1.0, 1.0),
]


@pytest.mark.parametrize("spacing", EXTREME_SPACINGS)
def test_edt_is_exact_for_spacings_far_from_one(spacing):
    from scipy import ndimage

    rng = np.random.default_rng(5)
    mask = rng.random((9, 10, 11)) > 0.05
    ref = ndimage.distance_transform_edt(mask, sampling=spacing)
    got = edt(mask, spacing).astype(np.float64)
    at = edt_at(mask, np.ones_like(mask), spacing).reshape(mask.shape).astype(np.float64)
    fg = mask
    for d in (got, at):
        assert np.isfinite(d).all() and (d[fg] > 0).all()  # was inf above ~1e19 and 0 below ~1e-19
        np.testing.assert_allclose(d, ref, rtol=3e-7, atol=0)
    sq = edt(mask, spacing, squared=True).astype(np.float64)
    ref2 = ref**2
    inside = ref2 < 3.4e38
    np.testing.assert_allclose(sq[inside & (ref2 > 1.2e-38)], ref2[inside & (ref2 > 1.2e-38)], rtol=7e-7)
    assert np.isinf(sq[~inside]).all()  # beyond float32: inf, as float32(d**2)
    t = edt(torch.from_numpy(mask), spacing)
    assert np.array_equal(t.numpy(), got.astype(np.float32))


@pytest.mark.parametrize("s", [1e20, 1e-20, 1e300, 1e-300, 3.0e19])
def test_1d_edt_at_agrees_with_edt_for_any_spacing(s):
    m = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    with np.errstate(over="ignore", under="ignore"):
        want = (np.array([2, 1, 0, 1, 2, 2, 1, 0, 1], np.float64) * s).astype(np.float32)  # rounded once
    got = edt(m, s)
    at = edt_at(m, np.ones_like(m), s)  # was inf above ~1e19 where edt was finite
    assert np.array_equal(got, want)
    # edt_at goes through the float32 squares of pass 1: equal to float32 rounding (bitwise for unit spacing)
    assert np.array_equal(np.isinf(at), np.isinf(want))
    np.testing.assert_allclose(at, want, rtol=2.5e-7, atol=0)


def test_spacings_no_float32_square_can_hold_are_refused():
    mask = np.ones((4, 5, 6), bool)
    mask[1, 2, 3] = False
    for spacing in [(1e-200, 1.0, 1e200), (1e-30, 1.0, 1e30)]:
        with pytest.raises(ValueError, match="spacing too far apart"):
            edt(mask, spacing)
        with pytest.raises(ValueError, match="spacing too far apart"):
            edt_at(mask, mask, spacing)


# --------------------------------------------------------------------------------------------------
# fix 6: numpy masks with a negative stride on a size-1 axis (and other byte orders)


def _odd_layouts(a):
    """The same values with a negative stride on a size-1 axis, and big-endian."""
    flipped = a[:, ::-1] if a.shape[1] == 1 else a
    assert flipped.strides[1] < 0 and np.array_equal(flipped, a)
    return [flipped, a.astype(a.dtype.newbyteorder(">"))] if a.dtype.itemsize > 1 else [flipped]


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, bool])
def test_distance_maps_take_numpy_masks_with_negative_strides(dtype):
    rng = np.random.default_rng(6)
    a = (rng.random((2, 1, 9, 10)) > 0.6).astype(dtype)
    b = (rng.random((2, 1, 9, 10)) > 0.4).astype(dtype)
    want_sd = signed_distance(a, spatial_dims=2)
    want_df = distance_field(a)
    want_hd = hausdorff_distance_maps(a, b)
    want_edt = edt(a, spatial_dims=2)
    for odd in _odd_layouts(a):
        assert np.array_equal(signed_distance(odd, spatial_dims=2), want_sd)
        assert np.array_equal(distance_field(odd), want_df)
        assert np.array_equal(hausdorff_distance_maps(odd, b), want_hd)
        assert np.array_equal(hausdorff_distance_maps(b, odd), hausdorff_distance_maps(b, a))
        assert np.array_equal(edt(odd, spatial_dims=2), want_edt)
        assert np.array_equal(edt_at(odd, odd, spatial_dims=2), want_edt[a != 0])


def test_metric_functions_take_numpy_masks_with_negative_strides():
    # fastloss/metrics/_checks.py::to_tensor (the lead's file) makes the same fresh copy as distance._as_tensor
    from fastloss.metrics import dice, hausdorff_distance

    rng = np.random.default_rng(7)
    p = rng.random((2, 1, 9, 10)) > 0.5
    g = rng.random((2, 1, 9, 10)) > 0.5
    want = (dice(p, g), hausdorff_distance(p, g, include_background=True))
    for odd in _odd_layouts(p):
        torch.testing.assert_close(dice(odd, g), want[0], equal_nan=True)
        torch.testing.assert_close(hausdorff_distance(odd, g, include_background=True), want[1], equal_nan=True)
    big_endian = p.astype(np.float32).astype(">f4")
    torch.testing.assert_close(dice(big_endian, g), want[0], equal_nan=True)


# --------------------------------------------------------------------------------------------------
# fixes 7 and 8: peak memory (a fresh process per reading: /proc/self/clear_refs resets the peak RSS)


def _peak(body: str, timeout: float = 300) -> dict:
    r = _subprocess(_PRELUDE + textwrap.dedent(body), timeout)
    if r.returncode != 0 and "clear_refs" in r.stderr:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = {}
    for ln in r.stdout.splitlines():
        if ln.startswith("PEAK "):
            _, name, value = ln.split()
            out[name] = int(value)
    return out


N_BIG = 1 << 26  # 64 Mi voxels: a bool mask of 64 MiB, float32 distances of 256 MiB


@needs_plain_build
def test_edt_of_a_bool_mask_makes_no_int64_copy():
    # before: (mask != 0) widened the bool mask to int64 first, 9 bytes a voxel beside the 4-byte result
    peaks = _peak(f"""
        from fastloss.distance import edt, edt_at, signed_distance
        n = {N_BIG}
        mask = torch.ones(256, 512, 512, dtype=torch.bool)
        mask[::32, ::64, ::64] = False
        query = torch.zeros_like(mask); query[5, :, 7] = True
        for name, fn in [("edt", lambda: edt(mask)), ("edt_at", lambda: edt_at(mask, query)),
                         ("signed_distance", lambda: signed_distance(mask)),
                         ("edt_numpy", lambda: edt(mask.numpy()))]:
            base = reset_peak()
            out = fn()
            print("PEAK", name, status("VmHWM") - base)
            del out
    """)
    MiB = 1 << 20
    n = N_BIG
    assert peaks["edt"] <= 4 * n + 96 * MiB, peaks  # the float32 result; was 9 bytes a voxel
    assert peaks["edt_numpy"] <= 4 * n + 96 * MiB, peaks
    assert peaks["edt_at"] <= 4 * n + 160 * MiB, peaks  # the pass-1 squares (float32); was 9 bytes a voxel
    # the stacked (outside, inside) transform (8 bytes a voxel) and the map (4): was ~17 bytes a voxel
    assert peaks["signed_distance"] <= 14 * n + 96 * MiB, peaks


@needs_plain_build
def test_topk_select_keeps_no_buffer_as_large_as_its_input():
    # 64 Mi values (256 MiB), every one in the same top bucket: the gather kept 4 bytes a value
    peaks = _peak(f"""
        from fastloss.ops.cpu_stats import topk_select_cpu
        n = {N_BIG}
        flat = torch.ones(n)
        spread = 1.0 + torch.rand(n, generator=torch.Generator().manual_seed(0)) * 0.2  # one bucket: [1, 1.25)
        for name, v in [("flat", flat), ("spread", spread)]:
            base = reset_peak()
            s, thr, cg, ce = topk_select_cpu(v, n // 3)
            print("PEAK", name, status("VmHWM") - base)
            if name == "flat":  # (the sum comes back as float32)
                assert s.item() == float(np.float32(n // 3)) and thr.item() == 1.0 and cg.item() == 0 and ce.item() == n
    """)
    assert max(peaks.values()) <= 48 << 20, peaks


@pytest.mark.parametrize("kind", ["one_bucket", "equal", "mixed"])
def test_topk_select_of_a_large_bucket_matches_torch_topk(kind):
    # more than 2^20 and m/16 values in the threshold's bucket: the histogram passes over the values
    g = torch.Generator().manual_seed(11)
    m = (1 << 21) + 12345
    if kind == "one_bucket":
        v = 1.0 + torch.rand(m, generator=g) * 0.2
    elif kind == "equal":
        v = torch.full((m,), 0.75)
        v[::1000] = 2.0
    else:
        v = torch.where(torch.rand(m, generator=g) < 0.7, 1.0 + torch.rand(m, generator=g) * 0.2,
                        torch.randn(m, generator=g) * 3)
    before = torch.get_num_threads()
    try:
        for k in sorted({1, 7, m // 1000, m // 3, m - 1, m}):
            results = []
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                results.append(cpu_stats.topk_select_cpu(v, k))
            for r in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(r, results[0]))  # any thread count, same bits
            s, thr, cg, ce = results[0]
            top = torch.topk(v.double(), k).values
            assert s.dtype == torch.float32 and s.item() == float(top.sum().float())  # summed in double, rounded once
            assert thr.item() == top[-1].item()
            assert cg.item() == int((v > thr).sum()) and ce.item() == int((v == thr).sum())
    finally:
        torch.set_num_threads(before)
