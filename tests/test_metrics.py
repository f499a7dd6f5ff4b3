"""fastloss.metrics against MONAI 1.6 (compute_dice, compute_surface_dice, compute_hausdorff_distance),
against a naive scipy MedPy-style HD95, and on hand-made cases whose answer is known."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastloss.metrics as M
from fastloss.metrics import _surface, core  # patched and read where their globals are used
from fastloss.metrics import dice, hausdorff_distance, mask_edges, surface_dice

monai_metrics = pytest.importorskip("monai.metrics")
ndimage = pytest.importorskip("scipy.ndimage")


def _label_pair(shape, C=4, B=2, seed=0, mix=0.6):
    """Smooth random one-hot label maps (reference, prediction), float32 (B, C, *shape)."""
    g = torch.Generator().manual_seed(seed)
    nd = len(shape)
    mode = "bilinear" if nd == 2 else "trilinear"
    coarse = tuple(max(2, s // 3) for s in shape)
    z = F.interpolate(torch.randn((B, C) + coarse, generator=g), size=shape, mode=mode, align_corners=False)
    z2 = F.interpolate(torch.randn((B, C) + coarse, generator=g), size=shape, mode=mode, align_corners=False)
    onehot = lambda x: F.one_hot(x.argmax(1), C).movedim(-1, 1).float()
    return onehot(z + mix * z2), onehot(z)


def _with_empties(p, y):
    """Add the three empty-mask situations: empty prediction, empty reference, both empty."""
    p, y = p.clone(), y.clone()
    p[0, 1] = 0  # empty prediction, non-empty reference
    y[1, 2] = 0  # empty reference, non-empty prediction
    p[1, 3] = 0  # both empty
    y[1, 3] = 0
    return p, y


def _monai(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


SHAPES = [(13, 17), (9, 11, 10)]
SPACINGS = {2: [None, (0.7, 1.3)], 3: [None, (1.5, 0.8, 2.0)]}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_matches_monai(shape, include_background, ignore_empty):
    p, y = _with_empties(*_label_pair(shape, seed=1))
    got = dice(p, y, include_background=include_background, ignore_empty=ignore_empty)
    want = _monai(
        monai_metrics.compute_dice, p, y, include_background=include_background, ignore_empty=ignore_empty
    )
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spacing_idx", [0, 1])
@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("size", ["small", "large"])
def test_surface_dice_matches_monai(shape, spacing_idx, per_class, size):
    # small tolerances: the CPU search tests a ball voxel by voxel; large ones: pass 1 and the line search
    spacing = SPACINGS[len(shape)][spacing_idx]
    p, y = _with_empties(*_label_pair(shape, seed=2 + spacing_idx))
    tol = [1.0, 1.5, 2.3] if per_class else 1.2
    if size == "large":
        tol = [6.0, 7.5, 9.0] if per_class else 7.0
    got = surface_dice(p, y, tol, spacing=spacing)
    want = _monai(
        monai_metrics.compute_surface_dice, p, y, tol if per_class else [tol] * 3, spacing=spacing
    )
    assert got.shape == (2, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)


def test_surface_dice_with_background_and_large_tolerance():
    p, y = _label_pair((12, 14), C=3, seed=5)
    got = surface_dice(p, y, [0.0, 4.0, 7.5], include_background=True)  # 7.5: beyond the shift limit
    want = _monai(monai_metrics.compute_surface_dice, p, y, [0.0, 4.0, 7.5], include_background=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spacing_idx", [0, 1])
@pytest.mark.parametrize("percentile", [95, None, 50, 100])
def test_hausdorff_matches_monai(shape, spacing_idx, percentile):
    spacing = SPACINGS[len(shape)][spacing_idx]
    p, y = _with_empties(*_label_pair(shape, seed=7 + spacing_idx))
    got = hausdorff_distance(p, y, percentile=percentile, spacing=spacing)
    want = _monai(monai_metrics.compute_hausdorff_distance, p, y, percentile=percentile, spacing=spacing)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("percentile", [95, None])
def test_directed_hausdorff_matches_monai(percentile):
    p, y = _with_empties(*_label_pair((10, 9, 11), seed=11))
    got = hausdorff_distance(p, y, percentile=percentile, directed=True, include_background=True)
    want = _monai(
        monai_metrics.compute_hausdorff_distance, p, y, percentile=percentile, directed=True, include_background=True
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)


def test_empty_mask_conventions():
    """The documented values, written out (MONAI's conventions, checked against MONAI above)."""
    y = torch.zeros(1, 2, 8, 8)
    y[0, 1, 2:5, 2:5] = 1
    empty = torch.zeros_like(y)
    inf = math.inf
    # empty prediction, non-empty reference
    assert dice(empty, y)[0, 1].item() == 0.0
    assert surface_dice(empty, y, 1.0)[0, 0].item() == 0.0
    assert math.isnan(hausdorff_distance(empty, y)[0, 0].item())
    assert hausdorff_distance(empty, y, percentile=None)[0, 0].item() == inf
    # empty reference, non-empty prediction
    assert math.isnan(dice(y, empty)[0, 1].item())
    assert dice(y, empty, ignore_empty=False)[0, 1].item() == 0.0
    assert surface_dice(y, empty, 1.0)[0, 0].item() == 0.0
    assert math.isnan(hausdorff_distance(y, empty)[0, 0].item())
    assert hausdorff_distance(y, empty, percentile=None)[0, 0].item() == inf
    # both empty
    assert math.isnan(dice(empty, empty)[0, 1].item())
    assert dice(empty, empty, ignore_empty=False)[0, 1].item() == 1.0
    assert math.isnan(surface_dice(empty, empty, 1.0)[0, 0].item())
    assert math.isnan(hausdorff_distance(empty, empty, percentile=None)[0, 0].item())
    assert math.isnan(hausdorff_distance(empty, empty)[0, 0].item())


def test_hand_computed_square_shift():
    """A 4x4 square and the same square moved 3 voxels along x: every border voxel of the moved
    square lies 0 or 3 (a column) from the other border; distances are known exactly."""
    y = torch.zeros(1, 1, 12, 12)
    p = torch.zeros(1, 1, 12, 12)
    y[0, 0, 2:6, 2:6] = 1
    p[0, 0, 2:6, 5:9] = 1
    # Each border is the 12-voxel perimeter. Ref border: rows 2, 5 and columns 2, 5. Pred border:
    # column 5 lies on the ref border (4 x 0); rows 2 and 5 at columns 6, 7 are 1 and 2 from
    # (row, 5) (2 x [1, 2]); column 8 is 3 from column 5 (4 x 3).
    d_pg = sorted([0, 0, 0, 0, 1, 2, 1, 2, 3, 3, 3, 3])
    d_gp = sorted(d_pg)  # symmetric by reflection
    assert mask_edges(y[0, 0].bool()).sum() == 12
    hd = hausdorff_distance(p, y, percentile=None, include_background=True)
    assert hd.item() == 3.0
    want95 = float(np.percentile(d_pg, 95))
    assert hausdorff_distance(p, y, percentile=95, include_background=True).item() == pytest.approx(want95)
    within1 = sum(d <= 1 for d in d_pg) + sum(d <= 1 for d in d_gp)
    assert surface_dice(p, y, 1.0, include_background=True).item() == pytest.approx(within1 / 24)
    assert dice(p, y).item() == pytest.approx(2 * 4 / 32)


def _medpy_hd95(p, y, spacing):
    """MedPy's hd95, written out: one percentile of the pooled distances of both directions."""
    fp, fy = p.astype(bool), y.astype(bool)
    bp = fp ^ ndimage.binary_erosion(fp)
    by = fy ^ ndimage.binary_erosion(fy)
    d_py = ndimage.distance_transform_edt(~by, sampling=spacing)[bp]
    d_yp = ndimage.distance_transform_edt(~bp, sampling=spacing)[by]
    return np.percentile(np.hstack((d_py, d_yp)), 95)


def test_pooled_matches_medpy_formula():
    spacing = (1.5, 0.8, 2.0)
    p, y = _label_pair((9, 12, 10), seed=13)
    got = hausdorff_distance(p, y, spacing=spacing, pooled=True)
    for b in range(2):
        for c in range(3):
            want = _medpy_hd95(p[b, c + 1].numpy(), y[b, c + 1].numpy(), spacing)
            assert got[b, c].item() == pytest.approx(want, rel=1e-5)


def test_mask_edges_matches_scipy_erosion():
    m = torch.rand(3, 7, 8, 9) > 0.3
    got = mask_edges(m, 3)
    for i in range(3):
        a = m[i].numpy()
        want = a ^ ndimage.binary_erosion(a)  # cross structure, border_value=0
        assert np.array_equal(got[i].numpy(), want)


def test_input_kinds_agree():
    p, y = _label_pair((10, 11), seed=17)
    ref_hd = hausdorff_distance(p, y)
    ref_nsd = surface_dice(p, y, 1.0)
    for conv in (lambda t: t.bool(), lambda t: t.to(torch.uint8), lambda t: t.double(), lambda t: t.numpy()):
        torch.testing.assert_close(hausdorff_distance(conv(p), conv(y)), ref_hd, equal_nan=True)
        torch.testing.assert_close(surface_dice(conv(p), conv(y), 1.0), ref_nsd, equal_nan=True)


@pytest.mark.cuda
def test_chunked_rows_agree(monkeypatch):
    """The GPU path's row chunks and its EDT-based NSD (the CPU path works row by row anyway)."""
    p, y = (t.cuda() for t in _with_empties(*_label_pair((8, 9, 10), seed=19)))
    whole = hausdorff_distance(p, y), hausdorff_distance(p, y, percentile=None)
    nsd = surface_dice(p, y, 2.5, spacing=(1.0, 0.5, 0.5))
    monkeypatch.setattr(_surface, "_CHUNK_VOXELS", 2 * 8 * 9 * 10)  # one row per EDT call
    monkeypatch.setattr(core, "_MAX_SHIFTS", 0)
    torch.testing.assert_close(hausdorff_distance(p, y), whole[0], equal_nan=True)
    torch.testing.assert_close(hausdorff_distance(p, y, percentile=None), whole[1], equal_nan=True)
    torch.testing.assert_close(surface_dice(p, y, 2.5, spacing=(1.0, 0.5, 0.5)), nsd, equal_nan=True)


def test_row_quantile_equals_torch_quantile():
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([1, 7, 0, 20, 3, 101])
    rows = torch.repeat_interleave(torch.arange(6), counts)
    values = torch.rand(int(counts.sum()), generator=g) * 10
    # rows stored one after another, values in any order within a row
    perm = torch.argsort(rows * 1000 + torch.randperm(values.numel(), generator=g))
    values[:3] = math.inf  # row 0 (one value) and row 1: infinite distances, as from an empty mask
    for q in (0.0, 0.25, 0.95, 1.0, None):
        got = _surface.row_quantile(values[perm], rows[perm], counts, q)
        for r in range(6):
            v = values[rows == r]
            if v.numel() == 0:
                assert math.isnan(got[r].item())
            else:
                want = v.max() if q is None else torch.quantile(v, q)
                assert got[r].item() == want.item() or (math.isnan(want.item()) and math.isnan(got[r].item()))
                # the CPU path's selection (numpy.partition) gives the same number
                sel = _surface.select_quantile(v[torch.randperm(v.numel(), generator=g)], q)
                assert sel.item() == want.item() or (math.isnan(want.item()) and math.isnan(sel.item()))


def test_bad_inputs():
    p, y = _label_pair((8, 8), seed=23)
    with pytest.raises(ValueError, match="same shape"):
        dice(p, y[:, :3])
    with pytest.raises(ValueError, match="binary"):
        surface_dice(p * 0.5, y, 1.0)
    with pytest.raises(ValueError, match="binary"):
        hausdorff_distance(p, y * 2)
    with pytest.raises(ValueError, match=">= 0"):
        surface_dice(p, y, -1.0)
    with pytest.raises(ValueError, match="finite"):
        surface_dice(p, y, math.inf)
    with pytest.raises(ValueError, match="one per evaluated class"):
        surface_dice(p, y, [1.0, 2.0])
    with pytest.raises(ValueError, match="one value per spatial dim"):
        hausdorff_distance(p, y, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        surface_dice(p, y, 1.0, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        hausdorff_distance(p, y, percentile=101)
    with pytest.raises(TypeError, match="torch.Tensor"):
        dice([[1]], y)
    with pytest.raises(ValueError, match="spatial dims"):
        dice(p[0, 0], y[0, 0])
    with pytest.raises(TypeError, match="include_background"):
        dice(p, y, include_background=1)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    p, y = _with_empties(*_label_pair((20, 18, 16), C=5, seed=29))
    spacing = (1.5, 0.8, 2.0)
    pc, yc = p.cuda(), y.cuda()
    for fn in (
        lambda a, b: dice(a, b),
        lambda a, b: surface_dice(a, b, [1.0, 1.5, 2.3, 6.0], spacing=spacing),
        lambda a, b: hausdorff_distance(a, b, spacing=spacing),
        lambda a, b: hausdorff_distance(a, b, percentile=None, spacing=spacing),
    ):
        got = fn(pc, yc)
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), fn(p, y), rtol=1e-5, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# the CPU path's per-row boxes (_prepare_cpu_crops): edge cases against MONAI
# ----------------------------------------------------------------------------------------------


def _box_cases(shape):
    """Masks whose boxes touch the image edge, empty rows, one-sided empties, a single voxel."""
    B, C = 2, 5
    y = torch.zeros((B, C) + shape)
    p = torch.zeros_like(y)
    full = tuple(slice(None) for _ in shape)
    corner = tuple(slice(0, 3) for _ in shape)
    far = tuple(slice(s - 4, s) for s in shape)
    mid = tuple(slice(2, s - 2) for s in shape)
    y[(0, 1) + corner] = 1  # touches the low edge of every axis
    p[(0, 1) + tuple(slice(0, 4) for _ in shape)] = 1
    y[(0, 2) + far] = 1  # touches the high edge; prediction empty
    p[(0, 3) + mid] = 1  # reference empty
    y[(1, 1) + full] = 1  # the whole image (border = the image boundary)
    p[(1, 1) + mid] = 1
    y[(1, 2) + (1,) * len(shape)] = 1  # single voxels far apart
    p[(1, 2) + tuple(s - 1 for s in shape)] = 1
    # (1, 3) and (0, 4), (1, 4): both empty
    return p, y


@pytest.mark.parametrize("shape", [(12, 9), (7, 9, 8), (15,)])
@pytest.mark.parametrize("include_background", [False, True])
def test_boxes_edge_and_empty_rows_match_monai(shape, include_background):
    p, y = _box_cases(shape)
    sp = tuple(0.5 + 0.25 * i for i in range(len(shape)))
    for spacing in (None, sp):
        got = hausdorff_distance(p, y, percentile=95, include_background=include_background, spacing=spacing)
        want = _monai(
            monai_metrics.compute_hausdorff_distance, p, y, percentile=95,
            include_background=include_background, spacing=spacing,
        )
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)
        got = hausdorff_distance(p, y, percentile=None, include_background=include_background, spacing=spacing)
        want = _monai(
            monai_metrics.compute_hausdorff_distance, p, y, include_background=include_background, spacing=spacing
        )
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)
        n_cls = 5 if include_background else 4
        for tol in (1.0, 3.0):
            got = surface_dice(p, y, tol, include_background=include_background, spacing=spacing)
            if len(shape) > 1:
                want = _monai(
                    monai_metrics.compute_surface_dice, p, y, [tol] * n_cls,
                    include_background=include_background, spacing=spacing,
                )
            else:  # MONAI's NSD takes 2D/3D only: brute force over scipy's border voxels
                want = _naive_nsd(p, y, tol, include_background, spacing)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)


def _naive_nsd(p, y, tol, include_background, spacing):
    first = 0 if include_background else 1
    out = torch.empty(p.shape[0], p.shape[1] - first)
    sp = np.asarray(spacing if spacing is not None else (1.0,) * (p.ndim - 2))
    for b in range(p.shape[0]):
        for c in range(first, p.shape[1]):
            pts = []
            for m in (p[b, c].numpy() > 0, y[b, c].numpy() > 0):
                pts.append(np.argwhere(m ^ ndimage.binary_erosion(m)) * sp)
            n = len(pts[0]) + len(pts[1])
            close = 0
            for a, o in ((pts[0], pts[1]), (pts[1], pts[0])):
                if len(a) and len(o):
                    d = np.sqrt(((a[:, None] - o[None]) ** 2).sum(-1)).min(1).astype(np.float32)
                    close += int((d <= np.float32(tol)).sum())
            out[b, c - first] = close / n if n else math.nan
    return out


# tolerance 1.5: the CPU search tests a small ball voxel by voxel; 7.0: pass 1 and the line search
@pytest.mark.parametrize("tol", [1.5, 7.0])
def test_layouts_and_dtypes_agree(tol):
    """One-hot maps made by F.one_hot(...).movedim(-1, 1) are channels-last; the CPU path reads them
    in memory order (and copies them as bytes). Same results for contiguous copies, sliced views, every
    input dtype (read as raw bits), and as MONAI."""
    p, y = _with_empties(*_label_pair((9, 10, 11), C=4, seed=31))
    assert not y.is_contiguous()  # channels-last, as _label_pair builds them
    want_hd = _monai(monai_metrics.compute_hausdorff_distance, p, y, percentile=95)
    want_nsd = _monai(monai_metrics.compute_surface_dice, p, y, [tol] * 3)
    big_p = torch.zeros((2, 4, 12, 10, 13)).to(memory_format=torch.channels_last_3d)
    big_y = big_p.clone()
    big_p[:, :, 2:11, :, 1:12], big_y[:, :, 2:11, :, 1:12] = p, y
    convs = [
        lambda t: t.contiguous(),
        lambda t: t,
        lambda t: t.bool(),
        lambda t: t.contiguous().to(torch.uint8),
        lambda t: t.to(torch.int32),
        lambda t: t.contiguous().to(torch.int64),
        lambda t: t.to(torch.float16),
        lambda t: t.contiguous().to(torch.bfloat16),
        lambda t: t.to(torch.float64),
    ]
    for conv in convs:
        a, b = conv(p), conv(y)
        torch.testing.assert_close(hausdorff_distance(a, b), want_hd, rtol=1e-5, atol=0, equal_nan=True)
        torch.testing.assert_close(surface_dice(a, b, tol), want_nsd, rtol=1e-5, atol=0, equal_nan=True)
    # views into larger tensors (strided, with an offset)
    a, b = big_p[:, :, 2:11, :, 1:12], big_y[:, :, 2:11, :, 1:12]
    torch.testing.assert_close(hausdorff_distance(a, b), want_hd, rtol=1e-5, atol=0, equal_nan=True)
    torch.testing.assert_close(surface_dice(a, b, tol), want_nsd, rtol=1e-5, atol=0, equal_nan=True)
    # -0.0 is 0
    neg_zero = torch.where(p > 0, p, torch.full_like(p, -0.0))
    assert bool(torch.signbit(neg_zero).any())
    torch.testing.assert_close(hausdorff_distance(neg_zero, y), want_hd, rtol=1e-5, atol=0, equal_nan=True)


def test_cpu_boxes_and_borders_match_torch():
    """The compiled per-row boxes of p | g and border counts against torch: boxes from nonzero
    indices, borders from mask_edges (which tests above tie to scipy's erosion)."""
    for shape in ((9, 10, 11), (13, 7), (21,)):
        p, y = _with_empties(*_label_pair(shape, C=4, seed=43)) if len(shape) > 1 else _box_cases(shape)
        for layout in (lambda t: t, lambda t: t.contiguous()):
            plan = _surface.CpuRows(layout(p), layout(y), include_background=True)
            rows = dict((r, counts) for r, counts, _ in plan.rows(None, distances=False))
            for r in range(p.shape[0] * p.shape[1]):
                b, c = divmod(r, p.shape[1])
                u = (p[b, c] != 0) | (y[b, c] != 0)
                if not bool(u.any()):
                    assert plan.boxes[r] is None and r not in rows
                    continue
                idx = torch.nonzero(u)
                lo = [0] * (3 - len(shape)) + idx.amin(0).tolist()
                hi = [1] * (3 - len(shape)) + (idx.amax(0) + 1).tolist()
                assert plan.boxes[r] == [v for pair in zip(lo, hi) for v in pair]
                want = [int(mask_edges(m[b, c] != 0).sum()) for m in (p, y)]
                assert rows[r].tolist() == want


def test_bad_values_anywhere_raise():
    """Non-binary values are found inside a row's box, in the dropped background channel, and as
    NaN; the message names the values."""
    p, y = _label_pair((8, 9, 10), C=3, seed=37)
    cases = []
    q = p.clone()
    q[0, 1][q[0, 1] > 0] = 0.5  # inside the foreground box of row (0, 1)
    cases.append((q, y, "0.5"))
    q = y.clone()
    q[1, 0, 0, 0, 0] = 2.0  # the background channel, dropped by the metric
    cases.append((p, q, "2.0"))
    q = p.clone()
    q[0, 2, 3, 3, 3] = float("nan")
    cases.append((q, y, "nan"))
    q = p.clone()
    q[1, 1, 7, 8, 9] = -1.0  # a negative value alone (its own box)
    cases.append((q, y, "-1.0"))
    for a, b, shown in cases:
        for fn in (lambda a, b: hausdorff_distance(a, b), lambda a, b: surface_dice(a, b, 1.0)):
            with pytest.raises(ValueError, match="binary") as err:
                fn(a, b)
            assert shown in str(err.value)


# ----------------------------------------------------------------------------------------------
# the batched (GPU) path, run on CPU tensors
# ----------------------------------------------------------------------------------------------


def _scattered_boxes(shape, B=2, C=5, seed=47):
    """Small objects of different sizes at different places, some touching the far image edge (each
    row's box is packed into a common box size that must stay inside the image)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros((B, C) + shape)
    p = torch.zeros_like(y)
    for b in range(B):
        for c in range(1, C):
            size = [int(torch.randint(1, max(2, s // 2), (1,), generator=g)) for s in shape]
            lo = [int(torch.randint(0, s - e + 1, (1,), generator=g)) for s, e in zip(shape, size)]
            if (b + c) % 3 == 0:  # touch the far edge along every axis
                lo = [s - e for s, e in zip(shape, size)]
            box = tuple(slice(l, l + e) for l, e in zip(lo, size))
            y[(b, c) + box] = 1
            shift = tuple(slice(max(0, l - 1), l + e - 1) for l, e in zip(lo, size))
            p[(b, c) + shift] = 1
    p[1, 4] = 0  # one-sided empty row
    return p, y


@pytest.mark.parametrize("shape", [(14, 17), (12, 11, 13)])
def test_batched_path_on_cpu_matches_monai(shape, monkeypatch):
    """The GPU path (whole-batch erosion, per-row boxes packed to one size, one EDT, padded sort, NSD by
    mask shifts or by the EDT) run on CPU tensors, against MONAI."""
    monkeypatch.setattr(_surface, "BATCHED_ON_CPU", True)
    spacing = tuple(0.6 + 0.3 * i for i in range(len(shape)))
    for p, y in (_scattered_boxes(shape), _with_empties(*_label_pair(shape, seed=53))):
        C = p.shape[1]
        for sp in (None, spacing):
            want = _monai(monai_metrics.compute_hausdorff_distance, p, y, percentile=95, spacing=sp)
            torch.testing.assert_close(hausdorff_distance(p, y, spacing=sp), want, rtol=1e-5, atol=0, equal_nan=True)
            want = _monai(monai_metrics.compute_hausdorff_distance, p, y, spacing=sp)
            got = hausdorff_distance(p, y, percentile=None, spacing=sp)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True)
            for tol in (1.0, 9.0):  # mask shifts; the EDT
                want = _monai(monai_metrics.compute_surface_dice, p, y, [tol] * (C - 1), spacing=sp)
                torch.testing.assert_close(surface_dice(p, y, tol, spacing=sp), want, rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("batched", [False, True])
def test_surface_metrics_equal_the_separate_metrics(batched, monkeypatch):
    """surface_metrics computes the borders and distances once for both metrics: the same numbers as
    the two separate calls, which the tests above tie to MONAI (CPU path and batched path)."""
    monkeypatch.setattr(_surface, "BATCHED_ON_CPU", batched)
    for shape, seed in (((9, 10, 11), 59), ((13, 12), 61)):
        p, y = _with_empties(*_label_pair(shape, seed=seed))
        sp = tuple(0.8 + 0.2 * i for i in range(len(shape)))
        for tol, pct, spacing in ((1.0, 95, None), ([0.5, 2.0, 6.5], None, sp), (3.0, 50, sp)):
            nsd, hd = M.surface_metrics(p, y, tol, percentile=pct, spacing=spacing)
            torch.testing.assert_close(nsd, surface_dice(p, y, tol, spacing=spacing), rtol=0, atol=0, equal_nan=True)
            want = hausdorff_distance(p, y, percentile=pct, spacing=spacing)
            torch.testing.assert_close(hd, want, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="tolerance"):
        M.surface_metrics(p, y, -1.0)
    with pytest.raises(ValueError, match="percentile"):
        M.surface_metrics(p, y, 1.0, percentile=101)


def test_cpu_threads_follow_torch():
    """The compiled CPU helpers run on torch.get_num_threads() threads; the results do not depend on it."""
    p, y = _with_empties(*_label_pair((40, 41, 42), seed=67))  # large enough to be threaded
    before = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            assert _surface.CpuRows(p, y, False).threads == n
            results.append(M.surface_metrics(p, y, 1.5))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
