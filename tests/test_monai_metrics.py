"""fastloss.metrics' MONAI-named functions and metric classes side by side with MONAI 1.6.1 itself
(monai.metrics), on random smooth label maps with empty masks, index maps, ignore_index, per-image
spacings and every reduction; and the fast Dice counting against plain torch sums."""

import math
import warnings

import numpy as np

import pytest
import torch
import torch.nn.functional as F

import fastloss.metrics as M
from fastloss.metrics import _subvoxel, _surface, core  # patched and read where their globals are used

mm = pytest.importorskip("monai.metrics")


def _pair(shape, C=4, B=2, seed=0, mix=0.6):
    """Smooth random one-hot (reference, prediction), float32 (B, C, *shape), with the three empty cases."""
    g = torch.Generator().manual_seed(seed)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    coarse = tuple(max(2, s // 3) for s in shape)
    z = F.interpolate(torch.randn((B, C) + coarse, generator=g), size=shape, mode=mode, align_corners=False)
    z2 = F.interpolate(torch.randn((B, C) + coarse, generator=g), size=shape, mode=mode, align_corners=False)
    onehot = lambda x: F.one_hot(x.argmax(1), C).movedim(-1, 1).float()  # noqa: E731
    y, p = onehot(z), onehot(z + mix * z2)
    if B > 1 and C > 3:
        p[0, 1] = 0  # empty prediction
        y[1, 2] = 0  # empty reference
        p[1, 3] = 0  # both empty
        y[1, 3] = 0
    return p, y


def _monai(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def _same(got, want, rtol=1e-5):
    torch.testing.assert_close(got.float(), torch.as_tensor(want).float(), rtol=rtol, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("shape", [(13, 17), (9, 11, 10)])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_compute_dice_matches_monai(shape, include_background, ignore_empty):
    p, y = _pair(shape)
    kw = dict(include_background=include_background, ignore_empty=ignore_empty)
    _same(M.compute_dice(p, y, **kw), _monai(mm.compute_dice, p, y, **kw))
    # index maps with num_classes (prediction, reference or both), as MONAI's DiceHelper takes them
    lp, ly = p.argmax(1, keepdim=True), y.argmax(1, keepdim=True)
    for a, b in ((lp, ly), (p, ly), (lp, y)):
        _same(M.compute_dice(a, b, num_classes=4, **kw), _monai(mm.compute_dice, a, b, num_classes=4, **kw))


@pytest.mark.parametrize("ignore_index", [0, 2, 255])
def test_compute_dice_ignore_index_matches_monai(ignore_index):
    p, y = _pair((12, 14), seed=1)
    lab = y.argmax(1, keepdim=True)
    lab[:, :, :3] = 255 if ignore_index == 255 else lab[:, :, :3]
    for target in (lab, y):
        if target is y and ignore_index == 255:
            target = y.clone()
            target[:, :, :, :3] = 0  # one-hot sentinel: all-zero voxels are ignored
        pred = p if target.shape[1] > 1 else p.argmax(1, keepdim=True)
        kw = dict(num_classes=4, ignore_index=ignore_index)
        _same(M.compute_dice(pred, target, **kw), _monai(mm.compute_dice, pred, target, **kw))


def test_fast_dice_counts_equal_plain_sums_for_every_dtype_and_layout():
    """The chunked counting against Σ p·g, Σ p, Σ g in float64, whatever dtype, layout and chunk size."""
    p, y = _pair((23, 9, 7), C=3, seed=2)
    inter = (p.double() * y.double()).sum((2, 3, 4))
    want = (2 * inter / (p.double().sum((2, 3, 4)) + y.double().sum((2, 3, 4)))).float()
    want = torch.where(y.sum((2, 3, 4)) > 0, want, torch.full_like(want, math.nan))
    old = core._DICE_CHUNK
    try:
        for chunk in (1, 200, 1 << 20):  # one slice per chunk, a few slices, the whole volume
            core._DICE_CHUNK = chunk
            for conv in (lambda t: t, torch.Tensor.bool, lambda t: t.to(torch.uint8), torch.Tensor.half,
                         torch.Tensor.double, lambda t: t.to(memory_format=torch.channels_last_3d),
                         lambda t: t.transpose(2, 4)):
                _same(M.dice(conv(p), conv(y)), want, rtol=0)  # a transpose keeps every (b, c) count
    finally:
        core._DICE_CHUNK = old


@pytest.mark.parametrize("bad", [0.5, -1.0, 2.0, float("nan"), 1e-30, 1 - 2**-24, float("inf")])
def test_fast_dice_rejects_every_non_binary_value(bad):
    """The exact check: one bad voxel anywhere (even 1e-30 or the float just below 1) raises."""
    p, y = _pair((9, 10, 11), C=3, seed=3)
    p[1, 2, 8, 9, 10] = bad
    with pytest.raises(ValueError, match="binary"):
        M.dice(p, y)
    with pytest.raises(ValueError, match="binary"):
        M.dice(y, p.double())


@pytest.mark.parametrize("percentile", [None, 0, 95])
@pytest.mark.parametrize("directed", [False, True])
def test_compute_hausdorff_distance_matches_monai(percentile, directed):
    p, y = _pair((11, 12, 9), seed=4)
    for spacing in (None, 1.5, (1.0, 0.5, 2.0), [(1.0, 0.5, 2.0), (0.8, 0.8, 0.8)]):
        kw = dict(percentile=percentile, directed=directed, spacing=spacing)
        _same(M.compute_hausdorff_distance(p, y, **kw), _monai(mm.compute_hausdorff_distance, p, y, **kw))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_compute_average_surface_distance_matches_monai(symmetric, include_background):
    p, y = _pair((14, 13), seed=5)
    for spacing in (None, (0.7, 1.3), [[0.7, 1.3], [2.0, 2.0]]):
        kw = dict(symmetric=symmetric, include_background=include_background, spacing=spacing)
        _same(M.compute_average_surface_distance(p, y, **kw), _monai(mm.compute_average_surface_distance, p, y, **kw))


def test_average_surface_distance_batched_path_matches_monai(monkeypatch):
    """The batched (GPU) path of the surface metrics, run on CPU tensors, gives MONAI's ASD too."""
    monkeypatch.setattr(_surface, "BATCHED_ON_CPU", True)
    p, y = _pair((10, 9, 8), seed=6)
    for symmetric in (False, True):
        got = M.compute_average_surface_distance(p, y, symmetric=symmetric, spacing=(1.0, 2.0, 0.5))
        want = _monai(mm.compute_average_surface_distance, p, y, symmetric=symmetric, spacing=(1.0, 2.0, 0.5))
        _same(got, want)


def test_average_surface_distance_by_hand():
    """Two single voxels 3 apart along axis 0: every border distance is 3 (6 with spacing 2)."""
    p = torch.zeros(1, 1, 7, 5)
    g = torch.zeros(1, 1, 7, 5)
    p[0, 0, 1, 2] = 1
    g[0, 0, 4, 2] = 1
    assert M.compute_average_surface_distance(p, g, include_background=True).item() == 3.0
    assert M.compute_average_surface_distance(p, g, include_background=True, spacing=(2.0, 1.0)).item() == 6.0
    g[0, 0, 4, 3] = 1  # a second reference voxel: from p only 3; from g 3 and sqrt(10)
    sym = M.compute_average_surface_distance(p, g, include_background=True, symmetric=True).item()
    assert sym == pytest.approx((3 + 3 + math.sqrt(10)) / 3, rel=1e-6)


@pytest.mark.parametrize("include_background", [False, True])
def test_compute_surface_dice_matches_monai(include_background):
    p, y = _pair((12, 10, 9), seed=7)
    n = 4 if include_background else 3
    tol = [0.0, 1.0, 1.5, 2.5][:n]
    for spacing in (None, 2.0, [(1.0, 0.5, 2.0), (0.8, 1.0, 1.0)]):
        kw = dict(include_background=include_background, spacing=spacing)
        _same(M.compute_surface_dice(p, y, tol, **kw), _monai(mm.compute_surface_dice, p, y, tol, **kw))


def test_surface_metrics_ignore_index_match_monai():
    p, y = _pair((10, 12), seed=8)
    for fn in (M.compute_hausdorff_distance, M.compute_average_surface_distance):
        _same(fn(p, y, ignore_index=2), _monai(getattr(mm, fn.__name__), p, y, ignore_index=2))
    _same(M.compute_surface_dice(p, y, [1, 1, 1], ignore_index=2),
          _monai(mm.compute_surface_dice, p, y, [1, 1, 1], ignore_index=2))
    # the metric classes mask the ignored voxels first (MONAI's create_ignore_mask), with labels too
    lab = y.argmax(1, keepdim=True)
    lab[:, :, :3] = 255
    onehot = F.one_hot(lab[:, 0].clamp_max(3), 4).movedim(-1, 1).float()
    for name in ("HausdorffDistanceMetric", "SurfaceDistanceMetric"):
        for ii, target in ((2, y), (255, onehot * (lab != 255))):
            ours, theirs = getattr(M, name)(ignore_index=ii, reduction="none"), getattr(mm, name)(ignore_index=ii, reduction="none")
            _same(ours(p, target), _monai(theirs, p, target))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "mean_batch", "sum_batch", "mean_channel", "sum_channel"])
def test_do_metric_reduction_matches_monai(reduction):
    f = torch.tensor([[0.5, math.nan, 0.25], [math.nan, math.nan, math.nan], [1.0, 0.0, math.nan]])
    got, got_n = M.do_metric_reduction(f, reduction)
    want, want_n = mm.do_metric_reduction(f.clone(), reduction)
    _same(got, want)
    _same(got_n, want_n)
    assert torch.isnan(f).sum() == 5  # the input is left as it was


@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_batch", "sum_channel", "none"])
@pytest.mark.parametrize("get_not_nans", [False, True])
def test_metric_classes_accumulate_like_monai(reduction, get_not_nans):
    batches = [_pair((9, 10), seed=s) for s in (10, 11)]
    pairs = [
        (M.DiceMetric(include_background=False, reduction=reduction, get_not_nans=get_not_nans),
         mm.DiceMetric(include_background=False, reduction=reduction, get_not_nans=get_not_nans), {}),
        (M.HausdorffDistanceMetric(percentile=95, reduction=reduction, get_not_nans=get_not_nans),
         mm.HausdorffDistanceMetric(percentile=95, reduction=reduction, get_not_nans=get_not_nans), {"spacing": 0.5}),
        (M.SurfaceDiceMetric([1.0, 2.0, 0.5], reduction=reduction, get_not_nans=get_not_nans),
         mm.SurfaceDiceMetric([1.0, 2.0, 0.5], reduction=reduction, get_not_nans=get_not_nans), {}),
        (M.SurfaceDistanceMetric(symmetric=True, reduction=reduction, get_not_nans=get_not_nans),
         mm.SurfaceDistanceMetric(symmetric=True, reduction=reduction, get_not_nans=get_not_nans), {}),
    ]
    for ours, theirs, kw in pairs:
        for p, y in batches:
            _same(ours(p, y, **kw), _monai(theirs, p, y, **kw))
        # a batch given as lists of channel-first tensors (MONAI's other form)
        p, y = batches[0]
        _same(ours(list(p), list(y), **kw), _monai(theirs, list(p), list(y), **kw))
        _same(ours.get_buffer(), theirs.get_buffer())
        got, want = ours.aggregate(), _monai(theirs.aggregate)
        for g_, w_ in zip(got if get_not_nans else [got], want if get_not_nans else [want]):
            _same(g_, w_)
        ours.reset()
        theirs.reset()
        assert ours.get_buffer() is None
        with pytest.raises(ValueError, match="nothing to aggregate"):
            ours.aggregate()


def test_dice_metric_return_with_label_and_index_maps():
    p, y = _pair((8, 9), seed=12)
    for rwl in (True, ["a", "b", "c"]):
        ours = M.DiceMetric(include_background=False, reduction="mean_batch", return_with_label=rwl)
        theirs = mm.DiceMetric(include_background=False, reduction="mean_batch", return_with_label=rwl)
        ours(p, y)
        theirs(p, y)
        assert ours.aggregate() == theirs.aggregate()
    lp, ly = p.argmax(1, keepdim=True), y.argmax(1, keepdim=True)
    ours, theirs = M.DiceMetric(num_classes=4, reduction="none"), mm.DiceMetric(num_classes=4, reduction="none")
    _same(ours(lp, ly), _monai(theirs, lp, ly))


def test_metric_classes_lists_of_different_sizes():
    """Items of different shapes in one list are evaluated one by one, as MONAI does."""
    (p1, y1), (p2, y2) = _pair((9, 10), B=1, seed=13), _pair((12, 7), B=1, seed=14)
    ours, theirs = M.HausdorffDistanceMetric(reduction="none"), mm.HausdorffDistanceMetric(reduction="none")
    _same(ours([p1[0], p2[0]], [y1[0], y2[0]]), _monai(theirs, [p1[0], p2[0]], [y1[0], y2[0]]))


def test_bad_arguments_are_clear():
    p, y = _pair((6, 7), seed=15)
    with pytest.raises(ValueError, match="distance_metric"):
        M.compute_hausdorff_distance(p, y, distance_metric="cosine")
    with pytest.raises(ValueError, match="one-hot encoded"):  # 2D and 3D only, as MONAI (surface_dice takes 1D)
        M.compute_surface_dice(p[:, :, 0], y[:, :, 0], [1, 1, 1], use_subvoxels=True)
    with pytest.raises(ValueError, match="per_component"):
        M.compute_dice(p, y, per_component=True)  # 4 channels: MONAI wants (B, 2, ...) too
    with pytest.raises(ValueError, match="one entry per image"):
        M.compute_hausdorff_distance(p, y, spacing=[(1.0, 1.0)] * 3)
    with pytest.raises(ValueError, match="reduction"):
        M.DiceMetric(reduction="median")
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        M.DiceMetric()(p[:, :, 0, 0], y[:, :, 0, 0])
    with pytest.raises(ValueError, match="num_classes"):
        M.compute_dice(p, y, num_classes=0)
    with pytest.raises(TypeError, match="ignore_index"):
        M.compute_dice(p, y, ignore_index=1.5)


def test_metrics_all_lists_exports():
    assert set(M.__all__) >= {"compute_dice", "DiceMetric", "SurfaceDistanceMetric", "dice", "surface_dice"}
    assert all(hasattr(M, n) for n in M.__all__)
    assert "np" not in M.__all__ and "torch" not in M.__all__


@pytest.mark.parametrize("metric", ["chessboard", "taxicab"])
@pytest.mark.parametrize("shape", [(10, 12), (9, 8, 10)])
def test_chessboard_and_taxicab_metrics_match_monai(metric, shape):
    p, y = _pair(shape, seed=16)
    cases = [
        ("compute_hausdorff_distance", dict(percentile=95)),
        ("compute_hausdorff_distance", dict(directed=True)),
        ("compute_average_surface_distance", dict(symmetric=True)),
        ("compute_surface_dice", dict(class_thresholds=[1.0, 2.0, 0.0])),
    ]
    for name, kw in cases:
        kw = dict(kw, distance_metric=metric, spacing=2.0)  # spacing plays no part for these metrics (MONAI)
        _same(getattr(M, name)(p, y, **kw), _monai(getattr(mm, name), p, y, **kw))


@pytest.mark.parametrize("metric", ["chessboard", "taxicab"])
@pytest.mark.parametrize("shape, spatial_dims", [((17,), None), ((9, 13), None), ((8, 11, 10), None), ((3, 9, 13), 2)])
def test_cdt_matches_scipy(metric, shape, spatial_dims):
    from fastloss.distance import cdt

    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(abs(hash((metric, shape))) % 2**32)
    for frac_background in (0.02, 0.3, 0.9):
        m = rng.random(shape) > frac_background
        m.flat[0] = False  # at least one zero voxel per volume (scipy's answer otherwise is -1)
        if spatial_dims == 2:
            m[:, 0, 0] = False
            want = np.stack([ndimage.distance_transform_cdt(v, metric=metric) for v in m])
        else:
            want = ndimage.distance_transform_cdt(m, metric=metric)
        got = cdt(torch.from_numpy(m), metric, spatial_dims=spatial_dims)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))
        np.testing.assert_array_equal(cdt(m, metric, spatial_dims=spatial_dims), want)  # numpy in, numpy out


def test_cdt_edge_cases():
    from fastloss.distance import cdt

    assert torch.isinf(cdt(torch.ones(4, 5), "chessboard")).all()  # no zero voxel: inf (scipy: -1)
    assert (cdt(torch.zeros(4, 5), "taxicab") == 0).all()
    one = torch.ones(2, 7, 7)
    one[0, 3, 3] = 0  # batch item 0 has a zero voxel, item 1 none
    d = cdt(one, "chessboard", spatial_dims=2)
    assert d[0].max() == 3 and torch.isinf(d[1]).all()
    assert cdt(one, "taxicab", spatial_dims=2)[0].max() == 6
    with pytest.raises(ValueError, match="metric"):
        cdt(one, "euclidean")
    with pytest.raises(TypeError):
        cdt([[1, 0]], "taxicab")


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_per_component_dice_matches_monai(ignore_empty):
    """Two reference cubes, the prediction shifted differently for each (MONAI's own scene), and random
    2D blobs with one empty reference."""
    y = torch.zeros((2, 2, 24, 24, 24))
    p = torch.zeros((2, 2, 24, 24, 24))
    y[0, 1, 3:8, 3:8, 3:8] = 1
    y[0, 1, 14:19, 14:19, 14:19] = 1
    p[0, 1, 4:9, 4:9, 4:9] = 1
    p[0, 1, 15:20, 13:18, 15:20] = 1
    p[1, 1, 2:5, 2:5, 2:5] = 1  # item 1: empty reference, non-empty prediction
    y[:, 0], p[:, 0] = 1 - y[:, 1], 1 - p[:, 1]
    kw = dict(per_component=True, ignore_empty=ignore_empty)
    _same(M.compute_dice(p, y, **kw), _monai(mm.compute_dice, p, y, **kw))
    p2, y2 = _pair((23, 29), C=2, B=3, seed=17, mix=0.5)
    _same(M.compute_dice(p2, y2, **kw), _monai(mm.compute_dice, p2, y2, **kw))
    ours, theirs = M.DiceMetric(per_component=True, reduction="none"), mm.DiceMetric(per_component=True, reduction="none")
    _same(ours(p2, y2), _monai(theirs, p2, y2))


# ------------------------------------------------------------------------------------------------
# NSD on surface elements (use_subvoxels=True)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.1), (3.0, 0.5, 1.0), (0.8, 1.2)])
def test_surfel_area_tables_equal_monais_for_every_code(spacing):
    """Every one of the 256 (3D) or 16 (2D) neighbour codes, anisotropic spacings included."""
    from monai.metrics.utils import get_code_to_measure_table

    want, _ = get_code_to_measure_table(spacing)
    got = _subvoxel._surfel_area_table(spacing, len(spacing), "cpu")
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.double(), rtol=1e-6, atol=0)  # MONAI's table is float32


def _ellipsoids(shape, B=2, C=4, seed=0):
    """Organ-like one-hot pairs: per class an ellipsoid of random centre and radii, the prediction's
    shifted and rescaled a little; float32 (B, C, *shape), class 0 the background."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    out = []
    for jitter in (0.0, 1.0):
        lab = np.zeros((B,) + tuple(shape), dtype=np.int64)
        rng_c = np.random.default_rng(seed)  # same organs for both, jitter moves the prediction's
        for b in range(B):
            for c in range(1, C):
                centre = [rng_c.uniform(0.3, 0.7) * n for n in shape]
                radii = [rng_c.uniform(0.12, 0.25) * n for n in shape]
                centre = [x + jitter * rng.normal(0, 1.0) for x in centre]
                radii = [r * (1 + jitter * rng.normal(0, 0.08)) for r in radii]
                inside = sum(((g - x) / r) ** 2 for g, x, r in zip(grids, centre, radii)) <= 1
                lab[b][inside] = c
        out.append(F.one_hot(torch.from_numpy(lab), C).movedim(-1, 1).float())
    y, p = out
    return p, y


@pytest.mark.parametrize("metric", ["euclidean", "chessboard", "taxicab"])
@pytest.mark.parametrize("shape", [(13, 17), (9, 11, 10)])
@pytest.mark.parametrize("include_background", [False, True])
def test_compute_surface_dice_subvoxels_matches_monai(metric, shape, include_background):
    """Random smooth maps with an empty prediction, an empty reference and both empty (NaN), every
    spacing form (per-image lists too), both directions' distances and area weights."""
    p, y = _pair(shape, seed=20)
    nd = len(shape)
    tol = [0.0, 1.0, 1.5, 2.5] if include_background else [1.0, 0.5, 2.5]
    for spacing in (None, (0.7, 1.3, 2.0)[:nd], [(0.7, 1.3, 2.0)[:nd], (1.0, 2.0, 0.6)[:nd]]):
        kw = dict(include_background=include_background, spacing=spacing, use_subvoxels=True, distance_metric=metric)
        got = M.compute_surface_dice(p, y, tol, **kw)
        want = _monai(mm.compute_surface_dice, p, y, tol, **kw)
        assert torch.isnan(want).any() and (want == 0).any()  # the empty-mask conventions are exercised
        _same(got, want)


@pytest.mark.parametrize("shape, spacing", [((40, 36, 30), (0.8, 0.8, 2.5)), ((64, 56), (0.6, 1.1))])
def test_surface_dice_subvoxels_organ_like_matches_monai(shape, spacing):
    p, y = _ellipsoids(shape, seed=21)
    tol = [1.0, 2.0, 0.5]
    for metric in ("euclidean", "taxicab"):
        kw = dict(spacing=spacing, use_subvoxels=True, distance_metric=metric)
        got = M.compute_surface_dice(p, y, tol, **kw)
        want = _monai(mm.compute_surface_dice, p, y, tol, **kw)
        assert ((want > 0.05) & (want < 1)).sum() >= 4  # partial overlaps: the thresholds matter
        _same(got, want)
    # the area weighting differs from counting border voxels (use_subvoxels=False)
    assert not torch.allclose(M.compute_surface_dice(p, y, tol, spacing=spacing), got)


def test_surface_dice_subvoxels_monai_scenes():
    """MONAI's own scenes: single voxels at spacing (3, 2, 1) and a half-space moved by one slice."""
    g, p = torch.zeros(1, 1, 32, 32, 32), torch.zeros(1, 1, 32, 32, 32)
    kw = dict(include_background=True, spacing=(3, 2, 1), use_subvoxels=True)
    for gset, pset in (([(10, 12, 14)], []), ([], [(10, 12, 16)]), ([(10, 12, 14)], [(10, 12, 16)])):
        g.zero_(), p.zero_()
        for v in gset:
            g[(0, 0) + v] = 1
        for v in pset:
            p[(0, 0) + v] = 1
        _same(M.compute_surface_dice(p, g, [1.0], **kw), _monai(mm.compute_surface_dice, p, g, [1.0], **kw))
    g, p = torch.zeros(1, 1, 40, 30, 30), torch.zeros(1, 1, 40, 30, 30)
    g[0, 0, :20], p[0, 0, :21] = 1, 1
    kw["spacing"] = (2, 1, 1)
    _same(M.compute_surface_dice(p, g, [1.0], **kw), _monai(mm.compute_surface_dice, p, g, [1.0], **kw))
    both_empty = M.compute_surface_dice(torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 5, 5), [1.0], use_subvoxels=True)
    assert torch.isnan(both_empty).all()


def test_surface_dice_subvoxels_batched_path_matches_monai(monkeypatch):
    """The device path (masks checked by torch, full EDT of each box) run on CPU tensors."""
    monkeypatch.setattr(_surface, "BATCHED_ON_CPU", True)
    p, y = _pair((10, 9, 8), seed=22)
    for metric in ("euclidean", "chessboard"):
        kw = dict(spacing=(1.0, 2.0, 0.5), use_subvoxels=True, distance_metric=metric)
        _same(M.compute_surface_dice(p, y, [1.0, 2.0, 0.5], **kw),
              _monai(mm.compute_surface_dice, p, y, [1.0, 2.0, 0.5], **kw))


def test_surface_dice_metric_subvoxels_accumulates_like_monai():
    batches = [_pair((12, 11), seed=s) for s in (23, 24)]
    ours = M.SurfaceDiceMetric([1.0, 2.0, 0.5], use_subvoxels=True, reduction="mean_batch", get_not_nans=True)
    theirs = mm.SurfaceDiceMetric([1.0, 2.0, 0.5], use_subvoxels=True, reduction="mean_batch", get_not_nans=True)
    for p, y in batches:
        _same(ours(p, y, spacing=(0.9, 1.4)), _monai(theirs, p, y, spacing=(0.9, 1.4)))
    _same(ours(list(p), list(y)), _monai(theirs, list(p), list(y)))
    for a, b in zip(ours.aggregate(), _monai(theirs.aggregate)):
        _same(a, b)


# ------------------------------------------------------------------------------------------------
# bad arguments: the exception MONAI raises, or a class of ours that is also MONAI's type
# ------------------------------------------------------------------------------------------------


def _bad_argument_cases():
    p, y = _pair((6, 7), C=3, seed=25)
    t2 = [1.0, 1.0]  # thresholds of the two evaluated classes
    fns = {
        "compute_dice": lambda L, a, b, **kw: L.compute_dice(a, b, **kw),
        "compute_hausdorff_distance": lambda L, a, b, **kw: L.compute_hausdorff_distance(a, b, **kw),
        "compute_average_surface_distance": lambda L, a, b, **kw: L.compute_average_surface_distance(a, b, **kw),
        "compute_surface_dice": lambda L, a, b, **kw: L.compute_surface_dice(a, b, t2, **kw),
    }
    cases = {}
    for name, fn in fns.items():
        cases[f"{name}: spatial shapes differ"] = lambda L, fn=fn: fn(L, p, y[:, :, :5])
        cases[f"{name}: channels differ"] = lambda L, fn=fn: fn(L, p, y[:, :2])
        cases[f"{name}: a list, not a tensor"] = lambda L, fn=fn: fn(L, p.tolist(), y.tolist())
        if name != "compute_dice":
            cases[f"{name}: unknown distance_metric"] = lambda L, fn=fn: fn(L, p, y, distance_metric="cosine")
            cases[f"{name}: spacing of the wrong length"] = lambda L, fn=fn: fn(L, p, y, spacing=(1.0, 1.0, 1.0))
            cases[f"{name}: per-image spacing, wrong count"] = lambda L, fn=fn: fn(L, p, y, spacing=[(1.0, 1.0)] * 3)
            cases[f"{name}: per-image spacing, wrong length"] = lambda L, fn=fn: fn(L, p, y, spacing=[(1.0, 1.0, 1.0)] * 2)
            cases[f"{name}: spacing mixing numbers and sequences"] = lambda L, fn=fn: fn(L, p, y, spacing=[1.0, (1.0, 1.0)])
    cases.update({
        "compute_dice: num_classes not an int": lambda L: L.compute_dice(p, y, num_classes=2.5),
        "compute_dice: num_classes above the channels": lambda L: L.compute_dice(p, y, num_classes=5),
        "compute_dice: per_component with 3 channels": lambda L: L.compute_dice(p, y, per_component=True),
        "compute_hausdorff_distance: percentile 101": lambda L: L.compute_hausdorff_distance(p, y, percentile=101),
        "compute_hausdorff_distance: percentile -1": lambda L: L.compute_hausdorff_distance(p, y, percentile=-1),
        "compute_surface_dice: one threshold for two classes": lambda L: L.compute_surface_dice(p, y, [1.0]),
        "compute_surface_dice: three thresholds": lambda L: L.compute_surface_dice(p, y, [1.0, 1.0, 1.0]),
        "compute_surface_dice: negative threshold": lambda L: L.compute_surface_dice(p, y, [1.0, -0.2]),
        "compute_surface_dice: infinite threshold": lambda L: L.compute_surface_dice(p, y, [np.inf, 1.0]),
        "compute_surface_dice: NaN threshold": lambda L: L.compute_surface_dice(p, y, [np.nan, 1.0]),
        "compute_surface_dice: threshold not a list": lambda L: L.compute_surface_dice(p, y, 1.0),
        "compute_surface_dice: subvoxels of 1D maps": lambda L: L.compute_surface_dice(
            p[:, :, 0], y[:, :, 0], t2, use_subvoxels=True),
        "compute_surface_dice: subvoxels, 3 thresholds": lambda L: L.compute_surface_dice(
            p, y, [1.0] * 3, use_subvoxels=True),
        "do_metric_reduction: unknown reduction": lambda L: L.do_metric_reduction(torch.ones(2, 2), "median"),
    })
    classes = {"DiceMetric": {}, "HausdorffDistanceMetric": {}, "SurfaceDistanceMetric": {},
               "SurfaceDiceMetric": {"class_thresholds": t2}}
    for name, ctor in classes.items():
        def call(*args, name=name, ctor=ctor, init=None, aggregate=False, **kw):
            def run(L):
                m = getattr(L, name)(**dict(ctor, **(init or {})))
                if args:
                    m(*args, **kw)
                if aggregate:
                    m.aggregate()
            return run
        cases.update({
            f"{name}: numpy batch": call(p.numpy(), y.numpy()),
            f"{name}: numpy reference": call(p, y.numpy()),
            f"{name}: no reference": call(p),
            f"{name}: (B, C) maps": call(p[:, :, 0, 0], y[:, :, 0, 0]),
            f"{name}: spatial shapes differ": call(p, y[:, :, :5]),
            f"{name}: empty lists": call([], []),
            f"{name}: lists of numpy arrays": call([a.numpy() for a in p], [a.numpy() for a in y]),
            f"{name}: aggregate before any call": call(aggregate=True),
            f"{name}: unknown reduction, aggregated": call(p, y, init={"reduction": "median"}, aggregate=True),
        })
        if name != "DiceMetric":
            cases[f"{name}: unknown distance_metric, called"] = call(p, y, init={"distance_metric": "cosine"})
            cases[f"{name}: spacing of the wrong length"] = call(p, y, spacing=(1.0, 1.0, 1.0))
    cases["HausdorffDistanceMetric: percentile 101"] = lambda L: L.HausdorffDistanceMetric(percentile=101)(p, y)
    cases["SurfaceDiceMetric: three thresholds"] = lambda L: L.SurfaceDiceMetric([1.0] * 3)(p, y)
    cases["SurfaceDiceMetric: negative threshold"] = lambda L: L.SurfaceDiceMetric([1.0, -1.0])(p, y)
    cases["SurfaceDiceMetric: subvoxels, 3 thresholds"] = lambda L: L.SurfaceDiceMetric([1.0] * 3, use_subvoxels=True)(p, y)
    return cases


_BAD = _bad_argument_cases()


def _raised(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return exc
    return None


@pytest.mark.parametrize("case", sorted(_BAD))
def test_bad_arguments_raise_monais_exception_type(case):
    """Each bad argument: MONAI 1.6.1 raises, and ours raises MONAI's exception class (or a class of ours
    derived from it, e.g. a ValueError that is also the RuntimeError MONAI's broadcast gives)."""
    theirs = _raised(lambda: _BAD[case](mm))
    ours = _raised(lambda: _BAD[case](M))
    assert theirs is not None, f"MONAI accepts {case!r}: not a parity case"
    assert ours is not None, f"fastloss accepts {case!r}, MONAI raises {type(theirs).__name__}: {theirs}"
    assert isinstance(ours, type(theirs)), (
        f"{case}: MONAI raises {type(theirs).__name__} ({theirs}), fastloss {type(ours).__mro__} ({ours})"
    )
    if isinstance(theirs, AssertionError) or type(theirs) in (RuntimeError, IndexError, AttributeError):
        assert isinstance(ours, (ValueError, TypeError))  # ours stays a ValueError/TypeError too


def test_shape_errors_are_value_and_assertion_errors():
    """Shape mismatches are fastloss.ShapeMismatchError (ValueError and AssertionError) everywhere."""
    from fastloss._validation import ShapeMismatchError

    p, y = _pair((6, 7), C=3, seed=26)
    for fn in (lambda: M.compute_dice(p, y[:, :, :5]), lambda: M.compute_dice(p, y[:, :2]),
               lambda: M.DiceMetric()(p, y[:, :, :5])):
        with pytest.raises(ShapeMismatchError):
            fn()
    with pytest.raises(AssertionError):
        M.compute_dice(p, y[:, :, :5])


def test_deliberate_differences_from_monai():
    """Inputs MONAI lets through (silently computing something else) that fastloss rejects, and the two
    it rejects that fastloss takes; each documented in the function's docstring."""
    p, y = _pair((6, 7), C=3, seed=27)
    with pytest.raises(ValueError, match="binary"):
        M.compute_dice(p * 0.5, y)  # MONAI thresholds with .bool()
    with pytest.raises(ValueError, match="positive"):
        M.compute_hausdorff_distance(p, y, spacing=-1.0)
    with pytest.raises(ValueError, match="same number of items"):
        M.DiceMetric()(list(p), list(y)[:1])  # MONAI's zip drops the unpaired item
    with pytest.raises(ValueError, match="reduction"):
        M.DiceMetric(reduction="median")  # MONAI raises at aggregate() only
    # numpy maps into the functions, and an isotropic number as the subvoxel spacing (MONAI: TypeError)
    _same(M.compute_surface_dice(p.numpy(), y.numpy(), [1.0, 1.0]), _monai(mm.compute_surface_dice, p, y, [1.0, 1.0]))
    _same(M.compute_surface_dice(p, y, [1.0, 1.0], spacing=2.0, use_subvoxels=True),
          _monai(mm.compute_surface_dice, p, y, [1.0, 1.0], spacing=(2.0, 2.0), use_subvoxels=True))


def test_compute_dice_takes_what_monai_takes():
    """(B, C) maps without spatial dims, more than 3 spatial dims, a batch item list mixed with a tensor."""
    g = torch.Generator().manual_seed(28)
    p, y = (torch.rand(3, 4, generator=g) > 0.5).float(), (torch.rand(3, 4, generator=g) > 0.5).float()
    for kw in ({}, {"include_background": False, "ignore_empty": False}):
        _same(M.compute_dice(p, y, **kw), _monai(mm.compute_dice, p, y, **kw))
    p6, y6 = (torch.rand(2, 2, 3, 4, 3, 2, generator=g) > 0.5).float(), (torch.rand(2, 2, 3, 4, 3, 2, generator=g) > 0.5).float()
    _same(M.compute_dice(p6, y6), _monai(mm.compute_dice, p6, y6))
    p, y = _pair((8, 9), seed=29)
    ours, theirs = M.DiceMetric(reduction="none"), mm.DiceMetric(reduction="none")
    _same(ours(list(p), y), _monai(theirs, list(p), y))


@pytest.mark.parametrize("metric", ["chessboard", "taxicab"])
def test_cdt_far_zeros_match_scipy(metric):
    """Distances far above the 8 offsets after which the chessboard pass drops finished lines, lines that
    hold inf next to finite values (one zero voxel per volume), thin shells (a surface's border)."""
    from fastloss.distance import cdt

    ndimage = pytest.importorskip("scipy.ndimage")
    one = np.ones((3, 41, 37), dtype=bool)
    one[0, 0, 0] = one[1, 40, 18] = one[2, 20, 36] = False  # one zero each, in a corner, on an edge, a side
    want = np.stack([ndimage.distance_transform_cdt(v, metric=metric) for v in one])
    np.testing.assert_array_equal(cdt(one, metric, spatial_dims=2), want)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in (30, 34, 28)], indexing="ij")
    r = np.sqrt((zz - 12.0) ** 2 + ((yy - 20.0) / 1.5) ** 2 + (xx - 10.0) ** 2)
    shell = ~((r > 5) & (r < 6.5))  # zero on a thin ellipsoidal shell, far from most of the volume
    want = ndimage.distance_transform_cdt(shell, metric=metric)
    assert want.max() > 12  # well past the first working-set update
    np.testing.assert_array_equal(cdt(torch.from_numpy(shell), metric).numpy(), want.astype(np.float32))


def test_surface_dice_messages_are_monais():
    """MONAI's unit tests compare these messages word for word (its test_surface_dice test_asserts)."""
    p = torch.zeros(1, 2, 20, 20)
    p[0, 1, 2:6, 2:6] = 1
    p[0, 0] = 1 - p[0, 1]
    y = p.roll(3, -1)
    calls = [
        lambda L: L.SurfaceDiceMetric([1, 1], include_background=True)(p.numpy(), y),
        lambda L: L.SurfaceDiceMetric([1, 1], include_background=True)(p, y.numpy()),
        lambda L: L.SurfaceDiceMetric([1, 1], include_background=True)(p[:, 1], y),
        lambda L: L.SurfaceDiceMetric([1, 1], include_background=True)(p, y[:, :, :, :12]),
        lambda L: L.SurfaceDiceMetric([1, 1], include_background=False)(p, y[:, :, :, :12]),
        lambda L: L.SurfaceDiceMetric([1, 1, 1], include_background=True)(p, y),
        lambda L: L.SurfaceDiceMetric([np.inf, 1], include_background=True)(p, y),
        lambda L: L.SurfaceDiceMetric([np.nan, 1], include_background=True)(p, y),
        lambda L: L.SurfaceDiceMetric([-0.22, 1], include_background=True)(p, y),
    ]
    for call in calls:
        theirs, ours = _raised(lambda: call(mm)), _raised(lambda: call(M))
        assert theirs is not None and isinstance(ours, type(theirs))
        assert str(ours) == str(theirs)
