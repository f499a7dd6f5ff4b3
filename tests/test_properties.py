"""Property-based tests (hypothesis, fixed profile): every paper loss against ``fastloss.reference`` on
random shapes, dtypes, label layouts, ignore masks, absent classes and extreme logits; the Triton path
(interpreted) and the ``auto`` backend on a smaller budget; the EDT against scipy; ``edt_at`` against
``edt``; the metrics against their definitions and MONAI.

The profile is derandomized (the same examples in every run), with bounded example counts and no
deadline, so CI is reproducible and its time bounded (~1 min on 2 cores).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastloss  # noqa: E402
from fastloss import reference as R  # noqa: E402
from fastloss.distance import edt, edt_at  # noqa: E402

settings.register_profile(
    "fastloss",
    derandomize=True,  # the same examples on every run and machine
    deadline=None,  # the first example pays for imports / kernel setup
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("fastloss")

D64 = torch.float64

# The paper's Table 2 losses (the TopK/Dice variants of Tables 3-4 share their code paths).
TABLE2 = [
    "CE", "WCE", "TopK", "Focal", "pCE", "SS", "Dice", "IoU", "Lovász", "Tversky", "GDice", "FocalTversky",
    "Asym", "pGDice", "BD", "HD", "DiceCE", "ELL", "DiceFocal", "DiceTopK", "DiceBD", "DiceHD",
]
# losses built on distance maps of the target: no ignore_index here (what an ignored voxel is to a
# distance map is each loss's own documented choice, tested in its own file), no soft targets
DISTANCE = {"pCE", "BD", "HD", "DiceBD", "DiceHD"}
NO_SOFT = DISTANCE | {"Lovász", "ELL"}
REF_DICE = dict(activation="softmax", include_background=False, batch=True)  # smoothing 1e-5


@contextlib.contextmanager
def backend(name: str):
    old = os.environ.get("FASTLOSS_BACKEND")
    os.environ["FASTLOSS_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTLOSS_BACKEND", None)
        else:
            os.environ["FASTLOSS_BACKEND"] = old


def build(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "DiceBD":  # a fixed α = 0.7 (the schedule itself is tested in test_compound.py)
            return fastloss.get_loss(name, alpha=0.7, alpha_step=0.0)
        return fastloss.get_loss(name)


def _maps(g, fn):
    out = np.zeros(tuple(g.shape))
    for b in range(g.shape[0]):
        for c in range(g.shape[1]):
            out[b, c] = fn(g[b, c].numpy() > 0.5)
    return torch.from_numpy(out)


def _phi(g):
    """Kervadec's signed map; zero for the background channel (BD drops it) and, as BoundaryLoss
    documents (MONAI's rule), for a mask with no boundary: empty (already 0) or full."""
    phi = _maps(g, R.signed_distance)
    phi[:, 0] = 0.0
    full = g.flatten(2).bool().all(-1)
    phi[full] = 0.0
    return phi


def reference(name, x, g, lab, mask, ignore_index, float_target=False):
    """The paper's formula for ``name`` from fastloss.reference (float64), with the same ignore mask."""
    m = dict(mask=mask)
    if name == "CE":
        return R.ce(x, g, **m)
    if name == "WCE":
        # batch weights w_c = N / (C n_c) (WeightedCrossEntropyLoss); the mean divides by Σ_i w_{y_i} for
        # labels, by the counted voxels for one-hot/soft targets (torch's two conventions, documented)
        w = R.reciprocal_frequency_weights(g, mask) / g.shape[1]
        return R.wce(x, g, w, normalize="voxels" if float_target else "weight", **m)
    if name == "TopK":
        return R.topk(x, g, k=10.0, **m)
    if name == "Focal":
        return R.focal(x, g, gamma=2.0, **m)
    if name == "pCE":
        return R.dpce(x, g, _maps(g, R.caliva_penalty))
    if name == "SS":
        return R.ss(x, g, w=0.1, eps=1e-5, include_background=False, batch=True, **m)
    if name == "Dice":
        return R.dice(x, g, **REF_DICE, **m)
    if name == "IoU":
        return R.dice(x, g, jaccard=True, **REF_DICE, **m)
    if name == "Lovász":
        return R.lovasz(x, lab, num_classes=x.shape[1], ignore_index=ignore_index)
    if name == "Tversky":
        return R.tversky(x, g, alpha=0.3, beta=0.7, **REF_DICE, **m)
    if name == "GDice":
        return R.gdice(x, g, batch=True, include_background=True, smooth_relative=True, **m)
    if name == "FocalTversky":
        return R.focal_tversky(x, g, alpha=0.3, beta=0.7, gamma=4 / 3, per_class_power=False, **REF_DICE, **m)
    if name == "Asym":
        return R.asym(x, g, beta=1.5, **REF_DICE, **m)
    if name == "pGDice":
        return R.pgdice(x, g, k=2.5, batch=True, include_background=True, smooth_relative=True, **m)
    if name == "BD":
        return R.boundary(x, g, _phi(g))
    if name == "HD":
        return R.hausdorff(x, g, R.distance_field_monai(g), R.distance_field_monai(R.activate(x.detach())))
    if name == "DiceCE":
        return R.dice(x, g, **REF_DICE, **m) + R.ce(x, g, **m)
    if name == "ELL":
        return R.ell(x, g, class_weight=R.ell_class_weights(g, mask), eps=1e-5, **REF_DICE, **m)
    if name == "DiceFocal":
        return R.dice(x, g, **REF_DICE, **m) + R.focal(x, g, gamma=2.0, **m)
    if name == "DiceTopK":
        return R.dice(x, g, **REF_DICE, **m) + R.topk(x, g, k=10.0, **m)
    if name == "DiceBD":
        return R.dice_boundary(x, g, _phi(g), alpha=0.7, dice_kw=REF_DICE)
    if name == "DiceHD":
        return R.dice_hausdorff(
            x, g, R.distance_field_monai(g), R.distance_field_monai(R.activate(x.detach())), dice_kw=REF_DICE
        )
    raise KeyError(name)


@st.composite
def loss_case(draw, name: str, max_voxels: int = 300, max_c: int = 6, soft_ok: bool = True, ignore_ok: bool = True):
    """A random valid input for loss ``name``: (logits float64, target, labels, mask, ignore_index)."""
    nd = draw(st.integers(1, 3))
    side = {1: 17, 2: 17, 3: 7}[nd]
    spatial = []
    for _ in range(nd):
        spatial.append(draw(st.integers(1, side)))
    while math.prod(spatial) > max_voxels:  # keep the naive oracle fast
        spatial[spatial.index(max(spatial))] //= 2
    B = draw(st.integers(1, 2))
    C = draw(st.integers(2, max_c))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    # absent classes: labels drawn from a random non-empty subset of the classes
    present = draw(st.lists(st.integers(0, C - 1), min_size=1, max_size=C, unique=True))
    lab = torch.tensor(present)[torch.randint(0, len(present), (B, *spatial), generator=gen)]
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    x = scale * torch.randn((B, C, *spatial), generator=gen, dtype=D64)
    layouts = ["labels", "labels_b1", "onehot"] + (["soft"] if soft_ok and name not in NO_SOFT else [])
    layout = draw(st.sampled_from(layouts))
    ignore_index, mask = None, None
    if ignore_ok and name not in DISTANCE and layout.startswith("labels") and draw(st.booleans()):
        ignore_index = draw(st.sampled_from([255, -1]))
        drop = torch.rand(lab.shape, generator=gen) < draw(st.sampled_from([0.1, 0.5]))
        drop.view(-1)[0] = False  # at least one counted voxel
        lab = torch.where(drop, torch.full_like(lab, ignore_index), lab)
        mask = (lab != ignore_index).to(D64)
    # one-hot (B, C, *spatial), all zero at ignored voxels (R.one_hot would read a (B, 1) label map
    # of one spatial voxel as (B, 1, *spatial) labels)
    counted = lab != ignore_index if ignore_index is not None else torch.ones_like(lab, dtype=torch.bool)
    g = F.one_hot(torch.where(counted, lab, 0), C).movedim(-1, 1).to(D64) * counted.unsqueeze(1)
    if layout == "labels":
        target = lab
    elif layout == "labels_b1":
        target = lab.unsqueeze(1)
    elif layout == "onehot":
        target = g.clone()
    else:
        g = torch.softmax(3 * torch.randn(g.shape, generator=gen, dtype=D64), 1)
        target = g.clone()
    return x, target, lab, g, mask, ignore_index


def _value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward()
    return out.detach(), x.grad


def _run_loss(name, x, target, ignore_index):
    loss = build(name)
    if ignore_index is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = fastloss.get_loss(name, ignore_index=ignore_index)
    return loss(x, target)


# ---------------------------------------------------------------------------------------------------
# losses: torch backend against the oracles, float64 and float32
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TABLE2)
def test_loss_matches_reference_torch_backend(name):
    @settings(PROFILE, max_examples=6 if name in DISTANCE or name == "Lovász" else 10)
    @given(case=loss_case(name), dtype=st.sampled_from([torch.float64, torch.float32]))
    def check(case, dtype):
        x, target, lab, g, mask, ign = case
        with backend("torch"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. absent classes, a single channel left
            v, gx = _value_and_grad(lambda t: _run_loss(name, t.to(dtype), target, ign), x)
            rv, rg = _value_and_grad(lambda t: reference(name, t, g, lab, mask, ign, target.is_floating_point()), x)
        assert torch.isfinite(v).all() and torch.isfinite(gx).all(), (v, gx)
        # float64 agrees to rounding; float32 to its own rounding of sums over <= 600 voxels; the
        # distance maps are float32 in fastloss
        tol = 1e-9 if dtype == torch.float64 and name not in DISTANCE else 2e-5
        torch.testing.assert_close(v.double(), rv, rtol=tol, atol=tol)
        torch.testing.assert_close(gx.double(), rg, rtol=max(tol, 1e-8) * 10, atol=tol)

    check()


EXTREME = ["CE", "WCE", "TopK", "Focal", "SS", "Dice", "IoU", "Lovász", "Tversky", "GDice", "FocalTversky",
           "Asym", "pGDice", "DiceCE", "ELL", "DiceFocal", "DiceTopK"]


def _ce_map(x, lab):
    return F.cross_entropy(x.double(), lab, reduction="none")


@pytest.mark.parametrize("name", EXTREME)
def test_extreme_logits_finite_and_exact(name):
    """Logits of +-1e4 make every softmax probability exactly 0 or 1: no NaN, no inf, and the value is
    the one the definitions give (log-sum-exp for the CE family, the reference for the rest)."""

    @settings(PROFILE, max_examples=5)
    @given(case=loss_case(name, max_voxels=64, soft_ok=False, ignore_ok=False))
    def check(case):
        x, target, lab, g, mask, ign = case
        gen = torch.Generator().manual_seed(int(x.numel()))
        x = 1e4 * torch.randint(-1, 2, x.shape, generator=gen).to(D64)
        with backend("torch"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v, gx = _value_and_grad(lambda t: _run_loss(name, t.float(), target, ign), x)
        assert torch.isfinite(v).all() and torch.isfinite(gx).all(), (v, gx)
        ce = _ce_map(x, lab)  # 0 or k * 1e4 (k in 0..2): exact in float32 too
        if name == "CE":
            want = ce.mean()
        elif name == "TopK":
            flat = ce.flatten()
            want = flat.topk(max(1, int(flat.numel() * 10 / 100))).values.mean()
        elif name == "Focal":
            # (1 - p)^2 * CE with p = exp(-CE) the true class's probability (0, 1 or 1/k on ties)
            want = ((1 - torch.exp(-ce)) ** 2 * ce).mean()
        elif name in ("WCE", "DiceCE", "DiceFocal", "DiceTopK", "ELL"):
            return  # finiteness is the property here (CE parts are checked above, Dice parts below)
        else:
            want = reference(name, x, g, lab, None, None)
        torch.testing.assert_close(v.double(), want, rtol=1e-5, atol=1e-6)

    check()


HALF = ["CE", "TopK", "Dice", "DiceCE", "GDice", "Tversky", "DiceTopK", "Focal"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_match_float32(dtype):
    """Half-precision logits: accumulation is float32, the loss float32; the result equals the float32
    loss of the same (rounded) logits to float32 rounding, and the gradient comes back in the dtype."""

    @settings(PROFILE, max_examples=6)
    @given(name=st.sampled_from(HALF), case=loss_case("Dice", max_voxels=200, soft_ok=False))
    def check(name, case):
        x, target, lab, g, mask, ign = case
        xh = x.to(dtype)
        with backend("torch"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v, gx = _value_and_grad(lambda t: _run_loss(name, t, target, ign), xh)
            v32, g32 = _value_and_grad(lambda t: _run_loss(name, t, target, ign), xh.float())
        assert v.dtype == torch.float32 and gx.dtype == dtype
        torch.testing.assert_close(v, v32, rtol=1e-5, atol=1e-6)
        # the gradient is rounded to the input dtype once
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(gx.float(), g32, rtol=2 * eps, atol=2 * eps * float(g32.abs().max()))

    check()


def test_sigmoid_single_channel_dice_matches_reference():
    """C = 1 is valid with a sigmoid (the binary form): MONAI's DiceLoss(sigmoid=True) on one channel."""

    @settings(PROFILE, max_examples=10)
    @given(case=loss_case("Dice", soft_ok=False, ignore_ok=False), batch=st.booleans())
    def check(case, batch):
        x, _, lab, _, _, _ = case
        x1 = x[:, :1]
        t = (lab > 0).unsqueeze(1).to(D64)
        with backend("torch"):
            v, gx = _value_and_grad(lambda z: fastloss.losses.DiceLoss(sigmoid=True, batch=batch)(z, t), x1)
        rv, rg = _value_and_grad(lambda z: R.dice(z, t, activation="sigmoid", batch=batch), x1)
        torch.testing.assert_close(v, rv, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gx, rg, rtol=1e-8, atol=1e-12)

    check()


# ---------------------------------------------------------------------------------------------------
# losses: the Triton kernels (interpreted on the CPU) and whatever ``auto`` is here
# ---------------------------------------------------------------------------------------------------

FAST = ["CE", "TopK", "Focal", "Dice", "GDice", "SS", "DiceCE", "DiceTopK", "ELL", "Lovász"]


def test_triton_path_matches_reference():
    pytest.importorskip("triton")
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1 set before fastloss is imported")

    @settings(PROFILE, max_examples=12)
    @given(name=st.sampled_from(FAST), case=loss_case("Dice", max_voxels=120, max_c=4))
    def check(name, case):
        x, target, lab, g, mask, ign = case
        if name in NO_SOFT and target.is_floating_point() and not torch.equal(target, target.round()):
            return
        with backend("triton"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v, gx = _value_and_grad(lambda t: _run_loss(name, t.float(), target, ign), x)
        rv, rg = _value_and_grad(lambda t: reference(name, t, g, lab, mask, ign), x)
        torch.testing.assert_close(v.double(), rv, rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(gx.double(), rg, rtol=2e-4, atol=2e-6)

    check()


def test_auto_backend_matches_reference():
    """``auto`` on CPU tensors: the compiled C++ kernels once they exist, else the torch backend."""

    @settings(PROFILE, max_examples=15)
    @given(name=st.sampled_from(FAST), case=loss_case("Dice", max_voxels=300), dtype=st.sampled_from([torch.float32, torch.float64]))
    def check(name, case, dtype):
        x, target, lab, g, mask, ign = case
        if name in NO_SOFT and target.is_floating_point() and not torch.equal(target, target.round()):
            return
        with backend("auto"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v, gx = _value_and_grad(lambda t: _run_loss(name, t.to(dtype), target, ign), x)
        rv, rg = _value_and_grad(lambda t: reference(name, t, g, lab, mask, ign), x)
        assert torch.isfinite(v).all() and torch.isfinite(gx).all()
        torch.testing.assert_close(v.double(), rv, rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(gx.double(), rg, rtol=2e-4, atol=2e-6)

    check()


# ---------------------------------------------------------------------------------------------------
# EDT
# ---------------------------------------------------------------------------------------------------


@st.composite
def edt_case(draw, max_voxels: int = 4000):
    nd = draw(st.integers(1, 3))
    side = {1: 64, 2: 40, 3: 16}[nd]
    spatial = [draw(st.integers(1, side)) for _ in range(nd)]
    batch = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))]
    while math.prod(spatial) * math.prod(batch) > max_voxels:
        spatial[spatial.index(max(spatial))] //= 2
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.02, 0.3, 0.9, 1.0]))  # 1.0: no background at all
    mask = rng.random(batch + spatial) < density
    spacing = None
    if draw(st.booleans()):
        spacing = [float(s) for s in rng.choice([0.5, 1.0, 1.7, 3.0], nd)]
    return mask, nd, spacing


def _scipy_edt(mask, nd, spacing):
    from scipy import ndimage

    out = np.empty(mask.shape, np.float64)
    lead = mask.shape[: mask.ndim - nd]
    for idx in np.ndindex(*lead) if lead else [()]:
        m = mask[idx]
        out[idx] = np.inf if m.all() else ndimage.distance_transform_edt(m, sampling=spacing)
    return out


def test_edt_matches_scipy():
    pytest.importorskip("scipy")

    @settings(PROFILE, max_examples=40)
    @given(case=edt_case(), as_tensor=st.booleans())
    def check(case, as_tensor):
        mask, nd, spacing = case
        arg = torch.from_numpy(mask) if as_tensor else mask
        got = edt(arg, spacing, spatial_dims=nd)
        got = got.numpy() if as_tensor else got
        assert got.dtype == np.float32 and got.shape == mask.shape
        want = _scipy_edt(mask, nd, spacing)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
        sq = edt(mask, spacing, spatial_dims=nd, squared=True)
        np.testing.assert_allclose(sq, want**2, rtol=2e-6, atol=1e-4)

    check()


def test_edt_at_equals_edt():
    @settings(PROFILE, max_examples=30)
    @given(case=edt_case(), qdensity=st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    def check(case, qdensity):
        mask, nd, spacing = case
        rng = np.random.default_rng(mask.size)
        query = rng.random(mask.shape) < qdensity
        full = edt(mask, spacing, spatial_dims=nd)
        got = np.asarray(edt_at(mask, query, spacing, spatial_dims=nd))
        want = full[query]
        assert got.shape == want.shape
        if spacing is None or all(s == 1.0 for s in spacing):
            np.testing.assert_array_equal(got, want)  # documented: bit for bit with unit spacing
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)

    check()


# ---------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------


@st.composite
def mask_pair(draw):
    nd = draw(st.integers(2, 3))
    side = {2: 24, 3: 10}[nd]
    spatial = tuple(draw(st.integers(2, side)) for _ in range(nd))
    B, C = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dens = draw(st.sampled_from([0.0, 0.05, 0.4]))
    p = rng.random((B, C) + spatial) < dens
    g = rng.random((B, C) + spatial) < draw(st.sampled_from([0.0, 0.05, 0.4]))
    # empty masks, sometimes both
    if draw(st.booleans()):
        p[0, 0] = False
    return torch.from_numpy(p).float(), torch.from_numpy(g).float()


def test_dice_metric_is_its_definition():
    from fastloss import metrics

    @settings(PROFILE, max_examples=40)
    @given(pair=mask_pair(), include_background=st.booleans(), ignore_empty=st.booleans())
    def check(pair, include_background, ignore_empty):
        p, g = pair
        got = metrics.dice(p, g, include_background=include_background, ignore_empty=ignore_empty)
        if not include_background and p.shape[1] > 1:
            p, g = p[:, 1:], g[:, 1:]
        want = torch.empty(p.shape[:2])
        for b in range(p.shape[0]):
            for c in range(p.shape[1]):
                a, r = p[b, c].bool(), g[b, c].bool()
                inter, na, nr = int((a & r).sum()), int(a.sum()), int(r.sum())
                if nr == 0:  # MONAI's conventions, documented in metrics.dice
                    want[b, c] = math.nan if ignore_empty else float(na == 0)
                else:
                    want[b, c] = 2 * inter / (na + nr)
        torch.testing.assert_close(got, want, equal_nan=True)

    check()


def test_surface_metrics_match_monai():
    pytest.importorskip("monai")
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    from fastloss import metrics

    @settings(PROFILE, max_examples=20)
    @given(pair=mask_pair(), percentile=st.sampled_from([None, 95.0, 50.0]), tol=st.sampled_from([0.0, 1.0, 2.5]))
    def check(pair, percentile, tol):
        p, g = pair
        C = p.shape[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns on empty masks
            want_hd = compute_hausdorff_distance(p, g, include_background=True, percentile=percentile)
            want_nsd = compute_surface_dice(p, g, [tol] * C, include_background=True)
        got_hd = metrics.hausdorff_distance(p, g, percentile=percentile, include_background=True)
        got_nsd = metrics.surface_dice(p, g, tol, include_background=True)
        torch.testing.assert_close(got_hd, want_hd.float(), equal_nan=True, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_nsd, want_nsd.float(), equal_nan=True, rtol=1e-5, atol=1e-6)

    check()


def test_edt_says_when_a_3d_mask_looks_like_a_stack_of_2d_masks():
    """(B, H, W) is one 3D volume unless spatial_dims=2; the ambiguous shape warns, the answer differs."""
    import fastloss.distance as dist

    m = torch.ones(4, 20, 20, dtype=torch.bool)
    m[:, 10, 10] = False
    m[0, :, :] = True  # image 0 has no zero: inf as a 2D image, finite as a slice of a volume
    dist._warn_ambiguous_stack.__globals__["warn_once"].__defaults__[0].clear()  # forget earlier warnings
    with pytest.warns(UserWarning, match=r"ONE 3D volume.*spatial_dims=2"):
        vol = edt(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_image = edt(m, spatial_dims=2)
        edt(torch.ones(20, 20, 20, dtype=torch.bool), spatial_dims=None)  # a cube is not ambiguous
    assert torch.isinf(per_image[0]).all() and float(vol[0, 10, 10]) == 1.0
