"""The statistics columns over a second label map (``aux_pg`` = Σ p·[aux = c]·m, ``aux_g`` = Σ [aux = c]·m;
``Target.aux_labels``) on every backend, and DiceCE + Skeleton Recall from one statistics pass (issue 22).

The reference is written out here: the aux labels' one-hot built class by class with ``==``, the voxel mask of
the primary labels (``ignore_index``) and of the aux labels' own ignore label applied by hand, the sums by
``torch.sum``, the gradient by autograd through ``torch.softmax``/``torch.sigmoid``."""

import numpy as np
import pytest
import torch

import fastloss.ops.stats as stats_mod
from fastloss import DiceCELoss, SkeletonRecallLoss
from fastloss._validation import attach_aux_labels, prepare_target
from fastloss.losses.topology import DiceCESkeletonRecallLoss
from fastloss.ops import cpu_stats
from fastloss.ops.stats import StatsSpec, class_stats, class_stats_torch, shared_statistics

AUX = ("aux_pg", "aux_g")
needs_compiled = pytest.mark.skipif(not cpu_stats.available(), reason="the compiled extension is not built")


def _triton():
    try:
        from fastloss.ops import triton_stats
    except ImportError:
        pytest.skip("triton is not installed")
    return triton_stats


def reference(x, labels, aux, activation, ignore_index=None):
    """(B, C, 2) float64: Σ p·a and Σ a with a_c = [aux = c] (one channel: [aux = 1]) at voxels whose label is
    counted (in range, not ignore_index) and whose aux label is not ignore_index."""
    B, C = x.shape[:2]
    x = x.reshape(B, C, -1).double()
    lab, aux = labels.reshape(B, -1).long(), aux.reshape(B, -1).long()
    p = {"softmax": lambda: torch.softmax(x, 1), "sigmoid": lambda: torch.sigmoid(x), "none": lambda: x}[activation]()
    hi = 2 if C == 1 else C
    counted = (lab >= 0) & (lab < hi)
    if ignore_index is not None:
        counted &= (lab != ignore_index) & (aux != ignore_index)
    cols = []
    for c in range(C):
        a = ((aux == (1 if C == 1 else c)) & counted).double()
        cols.append(torch.stack([(p[:, c] * a).sum(1), a.sum(1)], dim=1))
    return torch.stack(cols, dim=1)


def _case(seed, B, C, shape, activation, ignore_index=None, dtype=torch.float64, aux_dtype=torch.int64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((B, C) + shape, generator=gen, dtype=dtype)
    if activation == "none":
        x = torch.rand((B, C) + shape, generator=gen, dtype=dtype) + 0.01
    hi = 2 if C == 1 else C
    lab = torch.randint(0, hi, (B,) + shape, generator=gen)
    aux = torch.randint(0, hi, (B,) + shape, generator=gen)
    if ignore_index is not None:
        lab.view(-1)[::7] = ignore_index
        aux.view(-1)[::5] = ignore_index
    return x.requires_grad_(True), lab, aux.to(aux_dtype)


def _backends(dtype):
    out = [("torch", class_stats_torch)]
    if cpu_stats.available():
        out.append(("compiled", cpu_stats.class_stats_cpu))
    if dtype != torch.float64:
        ts = _triton()
        out.append(("triton", ts.class_stats_triton))
    return out


def _target(x, lab, aux, ignore_index):
    return attach_aux_labels(x, prepare_target(x, lab, ignore_index=ignore_index), aux)


@pytest.mark.parametrize("activation, C", [("softmax", 4), ("sigmoid", 3), ("none", 3), ("sigmoid", 1)])
@pytest.mark.parametrize("ignore_index", [None, 255, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_aux_columns_against_reference(activation, C, ignore_index, dtype):
    """Value and gradient of aux_pg/aux_g (alone, beside the Dice/CE columns, beside extra columns) on every
    backend, against the one-hot reference; float64 to 1e-12, float32 to float32 rounding of sums of ~1e3 terms."""
    if ignore_index == 2 and C < 3:
        pytest.skip("ignore_index 2 is a class only with 3 channels or more")
    x, lab, aux = _case(1, 2, C, (9, 11, 7), activation, ignore_index, dtype)
    ref = reference(x, lab, aux, activation, ignore_index)
    w = torch.rand(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-4)
    gtol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    t = _target(x, lab, aux, ignore_index)
    for cols in (AUX, ("pg", "p", "g", "ce", "count") + AUX, ("aux_g", "pp", "absdiff", "aux_pg")):
        spec = StatsSpec(activation, cols)
        ia, ig = cols.index("aux_pg"), cols.index("aux_g")
        for name, fn in _backends(dtype):
            out = fn(x, t, spec)
            got = torch.stack([out[..., ia], out[..., ig]], dim=-1).double()
            torch.testing.assert_close(got, ref, **tol, msg=lambda m: f"{name} {cols}: {m}")
            (g,) = torch.autograd.grad((got * w).sum(), x)
            torch.testing.assert_close(g.double(), g_ref.double(), **gtol, msg=lambda m: f"{name} {cols} gradient: {m}")


@needs_compiled
def test_compiled_fused_path_and_general_path_agree():
    """float32 softmax with labels (the fused kernels) against float32 with a mask tensor (a soft target: the
    general kernels) and the float64 reference: the same sums and gradients."""
    x, lab, aux = _case(3, 2, 5, (13, 17, 6), "softmax", 255, torch.float32)
    t = _target(x, lab, aux, 255)
    spec = StatsSpec("softmax", ("pg", "p", "g", "ce", "count") + AUX)
    fused = cpu_stats.class_stats_cpu(x, t, spec)
    # the same target one-hot, ignored voxels as all-zero rows (MONAI's sentinel convention: ignore_index 99
    # masks them), the aux labels' ignore label then 99
    onehot = prepare_target(x, lab, ignore_index=255).dense(torch.float32)
    soft_t = prepare_target(x, onehot.reshape(x.shape), ignore_index=99)
    soft_t = attach_aux_labels(x, soft_t, torch.where(aux == 255, torch.full_like(aux, 99), aux))
    assert soft_t.mask is not None and soft_t.raw_labels is None
    soft_spec = StatsSpec("softmax", AUX)
    general = cpu_stats.class_stats_cpu(x, soft_t, soft_spec)
    ref = reference(x, lab, aux, "softmax", 255)
    torch.testing.assert_close(fused[..., 5:].double(), ref, rtol=2e-5, atol=2e-4)
    torch.testing.assert_close(general.double(), ref, rtol=2e-5, atol=2e-4)
    w = torch.rand(2, 5, 2)
    (g1,) = torch.autograd.grad((fused[..., 5:] * w).sum(), x)
    (g2,) = torch.autograd.grad((general * w).sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_without_aux_labels_the_columns_are_zero():
    x, lab, _ = _case(4, 2, 3, (5, 6), "softmax")
    t = prepare_target(x, lab)
    for name, fn in _backends(torch.float32 if False else torch.float64):
        out = fn(x, t, StatsSpec("softmax", ("pg",) + AUX))
        assert torch.equal(out[..., 1:], torch.zeros_like(out[..., 1:])), name


@needs_compiled
def test_gradcheck_compiled_and_torch():
    x, lab, aux = _case(5, 2, 3, (4, 5, 3), "softmax", 255)
    t = _target(x, lab, aux, 255)
    spec = StatsSpec("softmax", ("pg", "g", "ce") + AUX)
    for fn in (class_stats_torch, cpu_stats.class_stats_cpu):
        assert torch.autograd.gradcheck(lambda v: fn(v, t, spec), (x,))
    xs, lab1, aux1 = _case(6, 2, 3, (4, 5), "sigmoid")
    t1 = _target(xs, lab1, aux1, None)
    assert torch.autograd.gradcheck(lambda v: 2 * cpu_stats.class_stats_cpu(v, t1, StatsSpec("sigmoid", AUX)), (xs,))


@pytest.mark.parametrize("aux_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_narrow_dtypes_and_strided_views(aux_dtype):
    """Aux labels of every integer dtype, and strided views (a step, a transpose), read in place: the same sums
    as int64 contiguous labels."""
    C = 2 if aux_dtype == torch.bool else 4
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, C, 10, 12, dtype=torch.float64)
    lab = torch.randint(0, C, (2, 10, 12), generator=gen)
    big = torch.randint(0, C, (2, 20, 12), generator=gen).to(aux_dtype)
    views = [big[:, ::2], big[:, :10].transpose(1, 2).contiguous().transpose(1, 2), big[:, 5:15]]
    spec = StatsSpec("softmax", ("pg",) + AUX)
    for aux in views:
        assert aux.shape == (2, 10, 12)
        ref = reference(x, lab, aux, "softmax")
        for name, fn in _backends(torch.float64) + ([("triton32", _triton().class_stats_triton)]):
            xx = x.float() if name == "triton32" else x
            got = fn(xx, _target(xx, lab, aux, None), spec)[..., 1:].double()
            torch.testing.assert_close(got, ref, rtol=1e-5 if name == "triton32" else 1e-12, atol=1e-5 if name == "triton32" else 1e-12)


def test_ignore_label():
    """An aux label equal to ignore_index counts nowhere, and nor does any aux label at a voxel whose primary
    label is ignore_index: hand-counted on a 2-voxel-per-class example."""
    x = torch.zeros(1, 3, 6, dtype=torch.float64)  # p = 1/3 everywhere
    lab = torch.tensor([[0, 1, 255, 2, 1, 0]])
    aux = torch.tensor([[1, 1, 1, 255, 2, 0]])
    t = _target(x, lab, aux, 255)
    for name, fn in _backends(torch.float64):
        out = fn(x, t, StatsSpec("softmax", AUX))
        # counted aux classes: voxels 0 (1), 1 (1), 4 (2), 5 (0); voxel 2's label and voxel 3's aux are ignored
        torch.testing.assert_close(out[0, :, 1], torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64), msg=name)
        torch.testing.assert_close(out[0, :, 0], out[0, :, 1] / 3, msg=name)


def test_out_of_range_aux_labels_raise_before_any_kernel(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran")

    monkeypatch.setattr(stats_mod, "_compute", boom)
    x = torch.randn(2, 3, 6, 7)
    lab = torch.zeros(2, 6, 7, dtype=torch.long)
    for bad in (3, -1):
        aux = torch.zeros(2, 6, 7, dtype=torch.int16)
        aux[1, 2, 3] = bad
        with pytest.raises(ValueError, match=rf"aux labels must lie in \[0, 2\].*found \[{bad}\]"):
            attach_aux_labels(x, prepare_target(x, lab), aux)
        with pytest.raises(ValueError, match="skeleton labels"):
            DiceCESkeletonRecallLoss()(x, lab, skeleton=aux)
    # the ignore label is allowed
    aux = torch.full((2, 6, 7), 255, dtype=torch.long)
    attach_aux_labels(x, prepare_target(x, lab, ignore_index=255), aux)
    with pytest.raises(TypeError, match="integer"):
        attach_aux_labels(x, prepare_target(x, lab), aux.float())
    with pytest.raises(ValueError, match="shape"):
        attach_aux_labels(x, prepare_target(x, lab), aux[:, :5])


def _labels(rng, shape, C):
    from scipy import ndimage as ndi

    fg = ndi.gaussian_filter(rng.random(shape), 1.5) > 0.5
    return torch.from_numpy((fg * rng.integers(1, C, size=shape)).astype(np.int64))


def _parts(x, y, skel, batch, ignore_index, smooth=1e-5):
    dce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=smooth, smooth_dr=smooth,
                     batch=batch, ignore_index=ignore_index)
    srec = SkeletonRecallLoss(smooth=smooth, batch=batch, ignore_index=ignore_index)
    return dce(x, y) + srec(x, y, skeleton=skel)


@pytest.mark.parametrize("spatial", [(17, 19), (11, 9, 10)])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_compound_equals_its_parts(spatial, batch, ignore_index, backend, monkeypatch):
    """DiceCESkeletonRecallLoss (one pass) against DiceCELoss + SkeletonRecallLoss computed separately: value and
    gradient, float64 to 1e-12 (auto, torch) and float32 to 1e-5 of the value / 1e-6 of the gradient."""
    if backend == "triton":
        _triton()
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    rng = np.random.default_rng(len(spatial) + 2 * batch)
    seg = torch.stack([_labels(rng, spatial, 3) for _ in range(2)])
    if ignore_index is not None:
        seg[:, :3] = torch.where(seg[:, :3] > 0, ignore_index, 0)
    loss = DiceCESkeletonRecallLoss(batch=batch, ignore_index=ignore_index)
    skel = loss.skeleton_recall.skeleton_target(seg)
    if ignore_index is not None:
        skel = torch.where(seg == ignore_index, seg, skel)
    dtypes = [torch.float32] if backend == "triton" else [torch.float64, torch.float32]
    for dt in dtypes:
        x = torch.randn((2, 3) + spatial, dtype=dt, generator=torch.Generator().manual_seed(3), requires_grad=True)
        ref = _parts(x, seg.unsqueeze(1), skel, batch, ignore_index)
        (g_ref,) = torch.autograd.grad(ref, x)
        for given in (skel, None):
            ours = loss(x, seg.unsqueeze(1), skeleton=given)
            (g,) = torch.autograd.grad(ours, x)
            tol = dict(rtol=1e-12, atol=1e-12) if dt == torch.float64 else dict(rtol=1e-5, atol=1e-5)
            gtol = dict(rtol=1e-12, atol=1e-14) if dt == torch.float64 else dict(rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(ours, ref, **tol)
            torch.testing.assert_close(g, g_ref, **gtol)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_compound_reads_the_logits_once(backend, monkeypatch):
    """One statistics computation for Dice, CE and the recall (float32: the fused formula; float64: the parts'
    torch formulas) where the parts took two."""
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    calls = []
    real = stats_mod._compute

    def counting(input, target, spec, voxel_map):
        calls.append(spec.columns)
        return real(input, target, spec, voxel_map)

    monkeypatch.setattr(stats_mod, "_compute", counting)
    rng = np.random.default_rng(1)
    seg = torch.stack([_labels(rng, (10, 11, 9), 3) for _ in range(2)])
    for dt in (torch.float32, torch.float64):
        x = torch.randn((2, 3, 10, 11, 9), dtype=dt, requires_grad=True)
        calls.clear()
        DiceCESkeletonRecallLoss()(x, seg).backward()
        assert len(calls) == 1 and set(AUX) <= set(calls[0]), calls


def test_shared_pass_with_other_aux_labels_is_computed_on_its_own():
    x, lab, aux = _case(8, 2, 3, (6, 7), "softmax")
    other = (aux + 1) % 3
    t_other = _target(x, lab, other, None)
    spec = StatsSpec("softmax", AUX)
    with shared_statistics(("pg",) + AUX, aux_labels=_target(x, lab, aux, None).aux_labels):
        first = class_stats(x, prepare_target(x, lab), StatsSpec("softmax", ("pg",)))
        got_ctx = class_stats(x, prepare_target(x, lab), spec)  # the context's aux labels
        got_other = class_stats(x, t_other, spec)  # another map: its own pass
    assert first.shape[-1] == 1
    torch.testing.assert_close(got_ctx.double(), reference(x, lab, aux, "softmax"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_other.double(), reference(x, lab, other, "softmax"), rtol=1e-12, atol=1e-12)
