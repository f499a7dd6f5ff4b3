"""Skeleton Recall (against a transcription of the authors' target transform and loss) and Boundary DoU (against
fastloss.reference.boundary_dou, written from the paper)."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import fastloss
from fastloss import reference as R
from fastloss.losses.topology import BoundaryDoULoss, DiceCESkeletonRecallLoss, SkeletonRecallLoss, boundary_counts
from fastloss.skeleton import tubed_skeleton

skm = pytest.importorskip("skimage.morphology")


# ---------------------------------------------------------------- the authors' path, transcribed (numpy + torch)
def authors_skeleton(seg: np.ndarray) -> np.ndarray:
    """SkeletonTransform(do_tube=True) of one sample's labels (*spatial): skimage skeleton of seg > 0, two
    skimage dilations (default footprint), times the labels."""
    out = np.zeros(seg.shape, dtype=np.int16)
    fg = seg > 0
    if fg.sum() != 0:
        sk = (skm.skeletonize(fg) > 0).astype(np.int16)
        sk = skm.dilation(skm.dilation(sk))
        out = sk * seg.astype(np.int16)
    return out


def authors_recall(x, skel, *, smooth=1.0, batch=False, mask=None):
    """SoftSkeletonRecallLoss(apply_nonlin=softmax, do_bg=False) forward: -recall."""
    p = torch.softmax(x, 1)[:, 1:]
    axes = list(range(2, x.ndim))
    with torch.no_grad():
        y = torch.zeros(x.shape, dtype=x.dtype)
        y.scatter_(1, skel.long().unsqueeze(1), 1)
        y = y[:, 1:]
        sum_gt = (y if mask is None else y * mask).sum(axes)
    inter = (p * y if mask is None else p * y * mask).sum(axes)
    if batch:
        inter, sum_gt = inter.sum(0), sum_gt.sum(0)
    return -((inter + smooth) / torch.clip(sum_gt + smooth, 1e-8)).mean()


def authors_dc_ce_srec(x, seg, skel, *, batch=False, smooth=1e-5):
    """DC_SkelREC_and_CE_loss with MemoryEfficientSoftDiceLoss (do_bg=False), CE, recall; weights 1; no ignore."""
    p = torch.softmax(x, 1)
    axes = tuple(range(2, x.ndim))
    y = torch.zeros(x.shape, dtype=torch.bool).scatter_(1, seg.long().unsqueeze(1), 1)[:, 1:]
    inter, sp, sg = (p[:, 1:] * y).sum(axes), p[:, 1:].sum(axes), y.sum(axes)
    if batch:
        inter, sp, sg = inter.sum(0), sp.sum(0), sg.sum(0)
    dc = -((2 * inter + smooth) / torch.clip(sg + sp + smooth, 1e-8)).mean()
    ce = torch.nn.functional.cross_entropy(x, seg.long())
    return ce + dc + authors_recall(x, skel, smooth=smooth, batch=batch)


def _labels(rng, shape, C, sigma=1.5):
    fg = ndi.gaussian_filter(rng.random(shape), sigma) > 0.5
    cls = rng.integers(1, C, size=shape)
    return (fg * cls).astype(np.int64)


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("spatial", [(33, 29), (14, 17, 12)])
def test_tubed_skeleton_equals_authors_transform(spatial):
    rng = np.random.default_rng(len(spatial))
    seg = np.stack([_labels(rng, spatial, 4) for _ in range(3)])
    seg[2] = 0  # an empty sample
    ours = tubed_skeleton(torch.from_numpy(seg), len(spatial)).numpy()
    for b in range(3):
        assert np.array_equal(ours[b], authors_skeleton(seg[b]))


@pytest.mark.parametrize("spatial", [(24, 27), (12, 13, 11)])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("given", [False, True])
def test_skeleton_recall_value_and_gradient(spatial, batch, given):
    rng = np.random.default_rng(5)
    C = 4
    seg = np.stack([_labels(rng, spatial, C) for _ in range(2)])
    skel = np.stack([authors_skeleton(s) for s in seg]).astype(np.int64)
    x = torch.randn((2, C) + spatial, dtype=torch.float64, requires_grad=True)
    ref = authors_recall(x, torch.from_numpy(skel), batch=batch)
    (g_ref,) = torch.autograd.grad(ref, x)
    loss = SkeletonRecallLoss(batch=batch)
    y = torch.from_numpy(seg).unsqueeze(1)
    ours = loss(x, y, skeleton=torch.from_numpy(skel) if given else None)
    (g,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, 1 + ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_skeleton_recall_float32_and_reduction_none():
    rng = np.random.default_rng(6)
    seg = torch.from_numpy(np.stack([_labels(rng, (20, 22), 3) for _ in range(2)]))
    skel = torch.from_numpy(np.stack([authors_skeleton(s.numpy()) for s in seg]).astype(np.int64))
    x = torch.randn(2, 3, 20, 22)
    torch.testing.assert_close(SkeletonRecallLoss()(x, seg), 1 + authors_recall(x.double(), skel).float(),
                               rtol=1e-5, atol=1e-6)
    per = SkeletonRecallLoss(reduction="none")(x, seg)
    assert per.shape == (2, 2, 1, 1)


def test_skeleton_recall_ignore_index():
    rng = np.random.default_rng(7)
    C, ign = 3, 255
    seg = np.stack([_labels(rng, (21, 23), C) for _ in range(2)])
    seg[:, :4, :] = np.where(seg[:, :4, :] > 0, ign, 0)  # ignored foreground: in the skeleton, masked out
    skel = np.stack([authors_skeleton(s) for s in seg]).astype(np.int64)
    mask = torch.from_numpy(seg != ign).unsqueeze(1).double()
    x = torch.randn(2, C, 21, 23, dtype=torch.float64, requires_grad=True)
    ref = authors_recall(x, torch.from_numpy(np.where(seg != ign, skel, 0)), mask=mask)
    ours = SkeletonRecallLoss(ignore_index=ign)(x, torch.from_numpy(seg))
    torch.testing.assert_close(ours, 1 + ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


@pytest.mark.parametrize("batch", [False, True])
def test_dice_ce_skeleton_recall_against_authors_compound(batch):
    rng = np.random.default_rng(8)
    C = 3
    seg = np.stack([_labels(rng, (13, 12, 14), C) for _ in range(2)])
    skel = np.stack([authors_skeleton(s) for s in seg]).astype(np.int64)
    x = torch.randn(2, C, 13, 12, 14, dtype=torch.float64, requires_grad=True)
    ref = authors_dc_ce_srec(x, torch.from_numpy(seg), torch.from_numpy(skel), batch=batch)
    ours = DiceCESkeletonRecallLoss(batch=batch)(x, torch.from_numpy(seg).unsqueeze(1))
    torch.testing.assert_close(ours, ref + 2)  # 1 - dice and 1 - recall against -dice and -recall
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


def test_gradcheck_skeleton_recall_and_boundary_dou():
    rng = np.random.default_rng(9)
    seg = torch.from_numpy(np.stack([_labels(rng, (9, 8), 3, 1.0) for _ in range(2)]))
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: SkeletonRecallLoss()(t, seg), (x,))
    assert torch.autograd.gradcheck(lambda t: 2 * SkeletonRecallLoss(batch=True, smooth=1e-5)(t, seg), (x,))
    assert torch.autograd.gradcheck(lambda t: BoundaryDoULoss()(t, seg), (x,))
    assert torch.autograd.gradcheck(lambda t: BoundaryDoULoss(batch=False)(t, seg), (x,))


@pytest.mark.parametrize(
    "kwargs, x_shape, y, exc",
    [
        ({"include_background": True}, None, None, ValueError),
        ({"smooth": -1.0}, None, None, ValueError),
        ({"tube_dilations": -1}, None, None, ValueError),
        ({}, (2, 1, 8, 8), "labels", ValueError),          # one channel: nothing left without the background
        ({}, (2, 3, 8, 8), "float", TypeError),            # float labels
        ({}, (2, 3, 8, 8), "shape", ValueError),           # labels of another shape
        ({}, (2, 3, 8), "labels", ValueError),             # 1 spatial dim and no skeleton=
        ({}, (2, 3, 8, 8), "list", TypeError),
    ],
)
def test_skeleton_recall_bad_input(kwargs, x_shape, y, exc):
    with pytest.raises(exc):
        loss = SkeletonRecallLoss(**kwargs)
        x = torch.randn(*x_shape)
        target = {
            "labels": torch.zeros((x_shape[0],) + x_shape[2:], dtype=torch.long),
            "float": torch.zeros((x_shape[0], 1) + x_shape[2:]),
            "shape": torch.zeros((x_shape[0], 1, 7, 8), dtype=torch.long),
            "list": [[0]],
        }[y]
        loss(x, target)


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (3, 4, 6, 7, 5), (1, 2, 1, 9)])
@pytest.mark.parametrize("batch", [True, False])
def test_boundary_dou_against_reference(shape, batch):
    torch.manual_seed(sum(shape))
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:])
    ours = BoundaryDoULoss(batch=batch)(x, y)
    if batch:
        ref = R.boundary_dou(x, y)
    else:
        ref = torch.stack([R.boundary_dou(x[b : b + 1], y[b : b + 1]) for b in range(shape[0])]).mean()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


def test_boundary_dou_alpha_cap_and_counts():
    y = torch.zeros(1, 60, 60, dtype=torch.long)
    y[0, 5:55, 5:55] = 1  # a 50x50 square: 196 boundary voxels of 2500 (alpha 0.84 before the cap)
    counts = boundary_counts(y, 2, 2)
    assert counts[0, 1].item() == 196
    assert counts[0, 0].item() == 236 + 200  # the image edge's ring and the ring around the square
    x = torch.randn(1, 2, 60, 60, dtype=torch.float64)
    capped, uncapped = BoundaryDoULoss()(x, y), BoundaryDoULoss(alpha_max=None)(x, y)
    torch.testing.assert_close(capped, R.boundary_dou(x, y))
    torch.testing.assert_close(uncapped, R.boundary_dou(x, y, alpha_max=None))
    assert not torch.allclose(capped, uncapped)


def test_boundary_dou_ignore_index():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 10, 9))
    y_ign = y.clone()
    y_ign[:, :, 0] = -1
    loss = BoundaryDoULoss(ignore_index=-1)(x, y_ign)
    assert torch.isfinite(loss)
    # ignoring a column equals cropping it away for the sums, but the voxels beside it become boundary voxels
    # (their neighbour has another label), as at the image edge: the crop's answer exactly
    torch.testing.assert_close(loss, BoundaryDoULoss()(x[..., 1:], y[..., 1:]))


def test_exports_and_registry():
    for name in ("SkeletonRecallLoss", "DiceCESkeletonRecallLoss", "BoundaryDoULoss"):
        assert getattr(fastloss, name) is getattr(fastloss.losses, name)
        assert name in fastloss.losses.__all__
    assert isinstance(fastloss.get_loss("SkeletonRecall"), SkeletonRecallLoss)
    assert isinstance(fastloss.get_loss("DiceCESkeletonRecall"), DiceCESkeletonRecallLoss)
    assert isinstance(fastloss.get_loss("BoundaryDoU"), BoundaryDoULoss)


def test_functional_forms():
    rng = np.random.default_rng(12)
    seg = torch.from_numpy(np.stack([_labels(rng, (16, 15), 3) for _ in range(2)]))
    x = torch.randn(2, 3, 16, 15)
    F = fastloss.functional
    torch.testing.assert_close(F.skeleton_recall_loss(x, seg, batch=True), SkeletonRecallLoss(batch=True)(x, seg))
    skel = tubed_skeleton(seg, 2)
    torch.testing.assert_close(F.skeleton_recall_loss(x, seg, skeleton=skel), SkeletonRecallLoss()(x, seg))
    torch.testing.assert_close(F.dice_ce_skeleton_recall_loss(x, seg), DiceCESkeletonRecallLoss()(x, seg))
    torch.testing.assert_close(F.boundary_dou_loss(x, seg), BoundaryDoULoss()(x, seg))


# ------------------------------------------------------------------------------------------------ cbDice
def _authors_soft_skel(img, iters):
    """clDice's / the cbDice authors' SoftSkeletonize (soft erode: plus-shaped min pools; dilate: box max pool)."""
    F = torch.nn.functional
    if img.ndim == 4:
        erode = lambda t: torch.min(-F.max_pool2d(-t, (3, 1), 1, (1, 0)), -F.max_pool2d(-t, (1, 3), 1, (0, 1)))  # noqa: E731
        dilate = lambda t: F.max_pool2d(t, 3, 1, 1)  # noqa: E731
    else:
        erode = lambda t: torch.min(torch.min(-F.max_pool3d(-t, (3, 1, 1), 1, (1, 0, 0)),  # noqa: E731
                                              -F.max_pool3d(-t, (1, 3, 1), 1, (0, 1, 0))),
                                    -F.max_pool3d(-t, (1, 1, 3), 1, (0, 0, 1)))
        dilate = lambda t: F.max_pool3d(t, 3, 1, 1)  # noqa: E731
    skel = F.relu(img - dilate(erode(img)))
    for _ in range(iters):
        img = erode(img)
        delta = F.relu(img - dilate(erode(img)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def _authors_weights(mask_input, skel_input, dim, prob_flag):
    from monai.transforms import distance_transform_edt

    if prob_flag:
        mask_prob, skel_prob = mask_input, skel_input
        mask, skel = (mask_prob > 0.5).int(), (skel_prob > 0.5).int()
    else:
        mask, skel = mask_input, skel_input
    distances = distance_transform_edt(mask).float()
    distances[mask == 0] = 0
    skel_radius = torch.zeros_like(distances)
    skel_radius[skel == 1] = distances[skel == 1]
    dist_norm = torch.zeros_like(distances)
    skel_norm = torch.zeros_like(skel_radius)
    for i in range(skel_radius.shape[0]):
        d_i, s_i = distances[i], skel_radius[i]
        r = max(s_i.max(), 1)
        d_i[d_i > r] = r
        dist_norm[i] = d_i / r
        skel_norm[i] = s_i / r
    eps = 1e-7
    inv = (1 + eps) / ((skel_norm if dim == 2 else skel_norm**2) + eps)
    inv[skel == 0] = 0
    if prob_flag:
        return dist_norm * mask_prob, skel_norm * mask_prob, inv * skel_prob
    return dist_norm * mask, skel_norm * mask, inv * skel


def authors_cbdice(y_pred, y_true, iters=10, smooth=1.0):
    """SoftcbDiceLoss.forward (morphological skeleton), transcribed: -2 T_prec T_sens / (T_prec + T_sens)."""
    dim = y_pred.ndim - 2
    fore = torch.max(y_pred[:, 1:], dim=1, keepdim=True)[0]
    p = torch.softmax(torch.cat([y_pred[:, :1], fore], dim=1), 1)[:, 1]
    y = torch.where(y_true > 0, 1, 0).squeeze(1).to(y_pred.dtype)
    sp = _authors_soft_skel(p.unsqueeze(1), iters).squeeze(1)
    sl = _authors_soft_skel(y.unsqueeze(1), iters).squeeze(1)
    q_vl, q_slvl, q_sl = _authors_weights(y, sl, dim, False)
    q_vp, q_spvp, q_sp = _authors_weights(p, sp, dim, True)

    def comb(a, b, c):
        d = (b * c).clone()
        m = (a != 0) & (b == 0)
        d[m] = (a * c)[m]
        return d

    tprec = (torch.sum(q_sp * q_vl) + smooth) / (torch.sum(comb(q_spvp, q_slvl, q_sp)) + smooth)
    tsens = (torch.sum(q_sl * q_vp) + smooth) / (torch.sum(comb(q_slvl, q_spvp, q_sl)) + smooth)
    return -2.0 * (tprec * tsens) / (tprec + tsens)


@pytest.mark.parametrize("spatial, iters", [((30, 27), 10), ((18, 16, 17), 5), ((25, 26), 0)])
def test_cbdice_against_authors(spatial, iters):
    pytest.importorskip("monai")
    rng = np.random.default_rng(13)
    C = 3
    seg = torch.from_numpy(np.stack([_labels(rng, spatial, C, 2.0) for _ in range(2)])).unsqueeze(1)
    # logits that look like a half-trained network: the labels' one-hot, smoothed, plus noise
    onehot = torch.nn.functional.one_hot(seg[:, 0], C).movedim(-1, 1).double()
    x = (3 * onehot + torch.randn(onehot.shape, dtype=torch.float64)).requires_grad_(True)
    ref = authors_cbdice(x, seg, iters)
    ours = fastloss.CbDiceLoss(iter_=iters)(x, seg)
    torch.testing.assert_close(ours, 1 + ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-5, atol=1e-8)


def test_cbdice_edge_cases_and_registry():
    x = torch.randn(2, 2, 12, 13)
    for y in (torch.zeros(2, 12, 13, dtype=torch.long), torch.ones(2, 12, 13, dtype=torch.long)):
        assert torch.isfinite(fastloss.CbDiceLoss()(x, y))
    with pytest.raises(ValueError):
        fastloss.CbDiceLoss()(torch.randn(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError):
        fastloss.CbDiceLoss()(x, torch.zeros(2, 1, 12, 13))
    assert isinstance(fastloss.get_loss("cbDice"), fastloss.CbDiceLoss)


@pytest.mark.parametrize("batch, ignore", [(False, None), (True, None), (False, 255)])
def test_skeleton_recall_sparse_sums_equal_the_statistics_pass(batch, ignore):
    """On CPU tensors the recall sums come from the tube voxels' logits alone; the statistics pass (GPU, and
    while torch.compile traces) must give the same sums and gradients."""
    rng = np.random.default_rng(14)
    seg = np.stack([_labels(rng, (15, 14, 13), 4) for _ in range(2)])
    if ignore is not None:
        seg[:, :3] = np.where(seg[:, :3] > 0, ignore, 0)
    labels = torch.from_numpy(seg)
    loss = SkeletonRecallLoss(batch=batch, ignore_index=ignore)
    skel = loss.skeleton_target(labels)
    if ignore is not None:
        skel = torch.where(labels == ignore, labels, skel)
    x = torch.randn(2, 4, 15, 14, 13, dtype=torch.float64, requires_grad=True)
    flat = skel.reshape(-1)
    idx = (flat > 0).nonzero().squeeze(1)
    sparse = loss.reduce_stats(loss._sparse_sums(x, idx, flat[idx]))
    dense, _ = loss.class_stats(x, skel.unsqueeze(1), ("pg", "g"))
    torch.testing.assert_close(sparse, dense)
    w = torch.rand_like(dense)
    torch.testing.assert_close(torch.autograd.grad((sparse * w).sum(), x)[0], torch.autograd.grad((dense * w).sum(), x)[0])


def test_skeleton_recall_bad_skeleton_labels():
    x = torch.randn(1, 3, 8, 9)
    y = torch.zeros(1, 8, 9, dtype=torch.long)
    skel = torch.zeros_like(y)
    skel[0, 4, 4] = 3  # not a class of a 3-channel input
    with pytest.raises(ValueError, match="skeleton labels"):
        SkeletonRecallLoss()(x, y, skeleton=skel)
