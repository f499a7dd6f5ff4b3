"""fastloss.skeletonize(method="parallel"): the GPU's thinning, run here by its host driver (the same passes and
per-voxel code as csrc/skeleton_cuda.cu).

2D: equal to scikit-image (Zhang-Suen is parallel as it stands). 3D: what the module documents, each property
checked by code written here, not by the code under test: inside the mask; thin (no voxel left that is no end
point, Euler invariant and 26-simple, counted on each voxel's 3x3x3 neighbourhood; no 2x2x2 cube); the mask's
26-connected components (scipy.ndimage.label), Euler characteristic (a count of vertices, edges, faces and cubes,
cross-checked with skimage.measure.euler_number) and 6-connected background components (cavities); idempotent;
batched == per volume. The CUDA kernels' answer equals the host driver's voxel for voxel (marked cuda).
"""

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from fastloss import _ext, skeletonize
from fastloss import skeleton as fl_skeleton

sk = pytest.importorskip("skimage.morphology").skeletonize
euler_number = pytest.importorskip("skimage.measure").euler_number

FULL = np.ones((3, 3, 3), bool)
pytestmark = pytest.mark.skipif(not _ext.has("skeletonize_parallel_host"),
                                reason="fastloss._C lacks the parallel thinning (rebuild: pip install -e .)")


# ------------------------------------------------------------------------------------------------------------
# shapes


def _blobs(rng, shape, sigma, level=0.5):
    return ndi.gaussian_filter(rng.random(shape), sigma) > level


def _tubes(rng, shape, n=3, radius=(1.0, 3.0)):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    out = np.zeros(shape, bool)
    for _ in range(n):
        a, b = rng.uniform(0, np.array(shape) - 1), rng.uniform(0, np.array(shape) - 1)
        d = b - a
        length = max(np.linalg.norm(d), 1e-9)
        d /= length
        rel = grid - a
        t = np.clip(rel @ d, 0, length)
        out |= np.linalg.norm(rel - t[..., None] * d, axis=-1) < rng.uniform(*radius)
    return out


def _radius(shape, centre):
    g = np.indices(shape).astype(float)
    return np.sqrt(sum((g[k] - centre[k]) ** 2 for k in range(len(shape))))


def _hollow_sphere(shape=(23, 25, 21), outer=9.5, inner=5.5):  # one cavity
    r = _radius(shape, [(s - 1) / 2 for s in shape])
    return (r < outer) & (r > inner)


def _torus(shape=(21, 27, 25), big=8.0, small=3.2):  # one tunnel
    g = np.indices(shape).astype(float) - np.array([(s - 1) / 2 for s in shape])[:, None, None, None]
    return (np.sqrt(g[1] ** 2 + g[2] ** 2) - big) ** 2 + g[0] ** 2 < small**2


def _sheet(rng, shape, thickness):
    m = np.zeros(shape, bool)
    ax = int(rng.integers(len(shape)))
    idx = [slice(None)] * len(shape)
    c = int(rng.integers(max(1, shape[ax] - thickness)))
    idx[ax] = slice(c, c + thickness)
    m[tuple(idx)] = True
    return m & (rng.random(shape) < 0.97)


def _cases_3d():
    rng = np.random.default_rng(2026)
    yield "empty", np.zeros((9, 10, 11), bool)
    yield "full", np.ones((13, 9, 11), bool)
    yield "full_touching_edge_odd", np.ones((7, 1, 12), bool)
    yield "cube2", np.pad(np.ones((2, 2, 2), bool), 2)  # scikit-image deletes it entirely
    yield "hollow_sphere", _hollow_sphere()
    yield "thick_hollow_box", np.pad(np.pad(np.zeros((5, 7, 3), bool), 3, constant_values=True), 1)
    yield "torus", _torus()
    yield "two_tori", _torus((13, 27, 25), 8.0, 2.5) | _torus((13, 27, 25), 4.0, 1.5)
    yield "one_deep", _blobs(rng, (1, 37, 41), 1.5)  # D == 1: Lee's four in-plane directions
    for k in range(3):
        shape = tuple(int(s) for s in rng.integers(9, 30, size=3))
        yield f"blobs{shape}", _blobs(rng, shape, rng.uniform(1.0, 2.5))
        yield f"tubes{shape}", _tubes(rng, shape, radius=(1.0, 3.5))
        yield f"sheet{shape}", _sheet(rng, shape, k + 1)
    yield "noise", rng.random((15, 14, 13)) < 0.45
    yield "blobs_touching_edge", _blobs(rng, (19, 23, 17), 1.5, 0.42)


CASES_3D = list(_cases_3d())


# ------------------------------------------------------------------------------------------------------------
# independent measurements


def _or_window(a, ax):
    """a[i] | a[i + 1] along axis ax (one shorter)."""
    n = a.shape[ax]
    return np.take(a, range(n - 1), axis=ax) | np.take(a, range(1, n), axis=ax)


def euler_26(m: np.ndarray) -> int:
    """Euler characteristic of the union of the closed unit cubes of the voxels (26-connectivity of the object,
    6 of the background): V - E + F - C of the cubical complex, every cell present when a voxel holding it is."""
    p = np.pad(np.asarray(m, bool), 1)
    vertices = _or_window(_or_window(_or_window(p, 0), 1), 2).sum()
    edges = sum(_or_window(_or_window(p, b), c).sum() for b, c in ((1, 2), (0, 2), (0, 1)))  # along axis 0, 1, 2
    faces = sum(_or_window(p, a).sum() for a in range(3))  # normal to axis a: held by the 2 voxels beside it
    return int(vertices - edges + faces - p.sum())


def components_26(m):
    return ndi.label(m, FULL)[1]


def background_components_6(m):  # 1 + the number of cavities
    return ndi.label(~np.pad(m, 1))[1]


def lee_deletable_voxels(s: np.ndarray):
    """The voxels of s that are no end point (not exactly one of 26 neighbours), Euler invariant (the 3x3x3
    neighbourhood's characteristic is the same without the voxel: the global change is the local one) and whose
    26 neighbours form at most one 26-component."""
    p = np.pad(s, 1)
    found = []
    for z, y, x in np.argwhere(s):
        patch = p[z : z + 3, y : y + 3, x : x + 3]
        if patch.sum() == 2:
            continue
        without = patch.copy()
        without[1, 1, 1] = False
        if euler_26(patch) == euler_26(without) and components_26(without) <= 1:
            found.append((int(z), int(y), int(x)))
    return found


def cubes_2x2x2(s):
    return int(np.logical_and.reduce([s[a:s.shape[0] - 1 + a, b:s.shape[1] - 1 + b, c:s.shape[2] - 1 + c]
                                      for a in (0, 1) for b in (0, 1) for c in (0, 1)]).sum())


def test_euler_count_matches_skimage():
    rng = np.random.default_rng(0)
    for m in [_hollow_sphere(), _torus(), rng.random((9, 8, 7)) < 0.5, np.ones((3, 4, 5), bool),
              np.zeros((2, 2, 2), bool)]:
        assert euler_26(m) == euler_number(m, connectivity=3)
    assert euler_26(_hollow_sphere()) == 2 and euler_26(_torus()) == 0 and euler_26(np.ones((2, 3, 4), bool)) == 1


def test_lee_check_finds_deletable_voxels():
    """The thinness check itself: it flags the voxels a solid block can lose, and none of a line's."""
    block = np.pad(np.ones((3, 3, 3), bool), 1)
    assert len(lee_deletable_voxels(block)) > 0
    line = np.zeros((5, 9, 5), bool)
    line[2, 1:8, 2] = True
    assert lee_deletable_voxels(line) == []


# ------------------------------------------------------------------------------------------------------------
# 3D guarantees


@pytest.mark.parametrize("name, m", CASES_3D, ids=[c[0] for c in CASES_3D])
def test_3d_guarantees(name, m):
    s = skeletonize(m, 3, method="parallel")
    assert s.dtype == np.bool_ and s.shape == m.shape
    assert not (s & ~m).any(), "skeleton voxels outside the mask"
    assert lee_deletable_voxels(s) == [], "voxels left that Lee's test deletes"
    assert cubes_2x2x2(s) == 0
    assert components_26(s) == components_26(m)
    assert euler_26(s) == euler_26(m)
    assert background_components_6(s) == background_components_6(m)
    assert np.array_equal(skeletonize(s, 3, method="parallel"), s), "not idempotent"
    if m.any():
        assert s.any()
    exact = skeletonize(m, 3)  # scikit-image's answer: where it keeps the topology, the two agree on it
    if components_26(exact) == components_26(m) and euler_26(exact) == euler_26(m):
        assert (components_26(s), euler_26(s)) == (components_26(exact), euler_26(exact))


def _lee_simple(patch) -> bool:
    """Euler invariant and 26-simple (the deletion test of a candidate), from a 3x3x3 patch."""
    without = patch.copy()
    without[1, 1, 1] = False
    return euler_26(patch) == euler_26(without) and components_26(without) <= 1


def simulate_gpu_schedule(m: np.ndarray) -> np.ndarray:
    """The CUDA kernels' schedule, written again in numpy: per direction the candidates (border voxels of the
    direction, not end points) of the image as the direction's pass begins; per parity subfield every candidate
    decided on the same image, then all of the subfield's deletions applied at once; until a sweep deletes nothing."""
    D, H, W = m.shape
    im = np.pad(m.astype(bool), 1)
    directions = [(0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, -1), (1, 0, 0), (-1, 0, 0)][: 4 if D == 1 else 6]
    while True:
        changed = False
        for dp, dr, dc in directions:
            core = im[1:-1, 1:-1, 1:-1]
            face = im[1 + dp : D + 1 + dp, 1 + dr : H + 1 + dr, 1 + dc : W + 1 + dc]
            box = ndi.convolve(im.astype(np.int32), np.ones((3, 3, 3), np.int32), mode="constant")
            neighbours = box[1:-1, 1:-1, 1:-1] - core
            candidates = core & ~face & (neighbours != 1)
            for s in range(8):
                sub = np.zeros_like(candidates)
                sub[(s >> 2) & 1 :: 2, (s >> 1) & 1 :: 2, s & 1 :: 2] = True
                doomed = [(z, y, x) for z, y, x in np.argwhere(candidates & sub)
                          if _lee_simple(im[z : z + 3, y : y + 3, x : x + 3])]
                for z, y, x in doomed:
                    im[z + 1, y + 1, x + 1] = False
                changed |= bool(doomed)
        if not changed:
            return im[1:-1, 1:-1, 1:-1]


def test_host_driver_follows_the_gpu_schedule():
    """The host driver (object-voxel lists, candidates bucketed by subfield) gives the image of the GPU's
    schedule (every voxel of a subfield decided at once), simulated independently."""
    rng = np.random.default_rng(12)
    for m in [_blobs(rng, (11, 13, 12), 1.3), _tubes(rng, (12, 14, 11), n=2, radius=(1.5, 3.0)),
              _torus((9, 17, 17), 5.0, 2.2), rng.random((7, 9, 8)) < 0.5, _blobs(rng, (1, 21, 19), 1.2), np.pad(np.ones((4, 5, 3), bool), 1)]:
        assert np.array_equal(skeletonize(m, 3, method="parallel"), simulate_gpu_schedule(m)), m.shape


def test_3d_keeps_what_scikit_image_loses():
    """scikit-image's sequential re-check tests simplicity only, so it deletes a voxel left with no neighbour:
    a 2x2x2 cube vanishes (as our exact copy of it shows); the parallel passes test the Euler change too."""
    m = np.pad(np.ones((2, 2, 2), bool), 2)
    assert not sk(m).any() and not skeletonize(m, 3).any()
    s = skeletonize(m, 3, method="parallel")
    assert s.sum() == 1 and components_26(s) == 1


def test_3d_known_skeletons():
    # a straight bar thins to its axis-parallel line (the ends stay: end points)
    bar = np.zeros((9, 11, 9), bool)
    bar[3:6, 1:10, 3:6] = True
    s = skeletonize(bar, 3, method="parallel")
    assert s.sum() >= 5 and components_26(s) == 1 and lee_deletable_voxels(s) == []
    assert np.ptp(np.argwhere(s)[:, 1]) >= 6  # it still spans the bar's length
    # a one-voxel line is its own skeleton
    line = np.zeros((5, 5, 12), bool)
    line[2, 2, 1:11] = True
    assert np.array_equal(skeletonize(line, 3, method="parallel"), line)
    assert not skeletonize(np.zeros((4, 5, 6)), 3, method="parallel").any()


@pytest.mark.parametrize("nd", [2, 3])
def test_batched_equals_per_volume(nd):
    rng = np.random.default_rng(17)
    spatial = (17, 13, 19) if nd == 3 else (33, 29)
    vols = [_blobs(rng, spatial, 1.4), _tubes(rng, spatial), np.zeros(spatial, bool), np.ones(spatial, bool),
            rng.random(spatial) < 0.5, _blobs(rng, spatial, 2.0)]
    batch = np.stack(vols).reshape((2, 3) + spatial)
    got = skeletonize(batch, nd, method="parallel")
    for i in range(2):
        for j in range(3):
            assert np.array_equal(got[i, j], skeletonize(batch[i, j], nd, method="parallel"))
    for threads in (1, 2, 3):
        assert np.array_equal(skeletonize(batch, nd, method="parallel", threads=threads), got)
    t = torch.from_numpy(batch)
    assert torch.equal(skeletonize(t, nd, method="parallel"), torch.from_numpy(got))


def test_tiny_and_degenerate_3d():
    rng = np.random.default_rng(5)
    for shape in [(1, 1, 1), (1, 1, 7), (1, 6, 1), (5, 1, 1), (2, 2, 2), (3, 3, 3), (2, 5, 3), (1, 9, 11)]:
        for m in (np.ones(shape, bool), np.zeros(shape, bool), rng.random(shape) < 0.6, rng.random(shape) < 0.3):
            s = skeletonize(m, 3, method="parallel")
            assert not (s & ~m).any()
            assert components_26(s) == components_26(m), (shape, m.astype(int).tolist())
            assert euler_26(s) == euler_26(m), shape
            assert lee_deletable_voxels(s) == []


# ------------------------------------------------------------------------------------------------------------
# 2D: scikit-image's answer


def test_2d_equals_scikit_image():
    rng = np.random.default_rng(22)
    cases = [np.zeros((7, 9), bool), np.ones((1, 1), bool), np.ones((1, 13), bool), np.ones((11, 1), bool),
             np.ones((2, 2), bool), np.ones((31, 17), bool)]
    for k in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 70, size=2))
        kind = k % 4
        if kind == 0:
            cases.append(rng.random(shape) < rng.uniform(0.1, 0.9))
        elif kind == 1:
            cases.append(_blobs(rng, shape, rng.uniform(0.7, 3.0)))
        elif kind == 2:
            cases.append(_tubes(rng, shape))
        else:
            cases.append(_radius(shape, [s / 2 for s in shape]) < min(shape) / 2.5)
    bad = [m.shape for m in cases if not np.array_equal(skeletonize(m, 2, method="parallel"), sk(m))]
    assert not bad, bad


def test_2d_parallel_equals_exact_tensor_and_dtypes():
    rng = np.random.default_rng(8)
    m = _blobs(rng, (3, 40, 35), 1.3)
    want = np.stack([sk(x) for x in m])
    for dtype in (torch.bool, torch.uint8, torch.int8, torch.int64, torch.float32):
        values = torch.from_numpy(m).to(dtype) * (-2 if dtype.is_signed else 1)
        got = skeletonize(values, spatial_dims=2, method="parallel")
        assert got.dtype == torch.bool and np.array_equal(got.numpy(), want)


# ------------------------------------------------------------------------------------------------------------
# the tube of the Skeleton Recall loss: the device path (torch ops) equals the CPU path (stamped L1 balls)


@pytest.mark.parametrize("sd, shape", [(2, (2, 37, 41)), (3, (2, 17, 21, 19)), (3, (1, 1, 23, 25))])
def test_tube_on_device_path_equals_cpu_path(sd, shape):
    rng = np.random.default_rng(31)
    fg = ndi.gaussian_filter(rng.random(shape), (0,) * (len(shape) - sd) + (1.5,) * sd) > 0.5
    labels = torch.from_numpy(fg * rng.integers(1, 4, size=shape))
    for dilations in (0, 1, 2, 3):
        cpu = fl_skeleton._tubed_impl(labels, sd, dilations, 1, "parallel")
        dev = fl_skeleton._tubed_on_device(labels, sd, dilations, 1, "parallel")
        assert torch.equal(cpu, dev)
        assert torch.equal(fl_skeleton._tubed_impl(labels, sd, dilations, 1, "parallel", indices_only=True),
                           fl_skeleton._tubed_on_device(labels, sd, dilations, 1, "parallel", indices_only=True))
    # an oracle of the tube: the skeleton dilated by scipy with the cross, times the labels
    skel = skeletonize(labels.numpy() > 0, sd, method="parallel")
    struct = ndi.generate_binary_structure(sd, 1).reshape((1,) * (len(shape) - sd) + (3,) * sd)
    tube = ndi.binary_dilation(skel, struct, iterations=2)
    want = np.where(tube, labels.numpy(), 0)
    assert np.array_equal(fl_skeleton.tubed_skeleton(labels, sd, method="parallel").numpy(), want)
    boolean = fl_skeleton._tubed_on_device(labels > 0, sd, 2, 1, "parallel")
    assert boolean.dtype == torch.bool and np.array_equal(boolean.numpy(), tube & fg)


def test_tubed_skeleton_default_on_cpu_is_exact():
    rng = np.random.default_rng(3)
    labels = torch.from_numpy(_blobs(rng, (2, 15, 17, 13), 1.2).astype(np.int64))
    assert torch.equal(fl_skeleton.tubed_skeleton(labels, 3), fl_skeleton.tubed_skeleton(labels, 3, method="exact"))
    assert torch.equal(fl_skeleton.tube_indices(labels, 3), fl_skeleton.tube_indices(labels, 3, method="exact"))


# ------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, exc",
    [({"method": "fast"}, ValueError), ({"method": "Exact"}, ValueError), ({"method": 1}, TypeError),
     ({"method": True}, TypeError), ({"method": "parallel", "threads": 0}, ValueError),
     ({"method": "parallel", "spatial_dims": 4}, ValueError)],
)
def test_bad_method(kwargs, exc):
    with pytest.raises(exc):
        skeletonize(np.ones((4, 5, 6)), **kwargs)


def test_bad_method_tubed():
    labels = torch.ones(2, 6, 7, dtype=torch.int64)
    with pytest.raises(ValueError, match="method"):
        fl_skeleton.tubed_skeleton(labels, 2, method="gpu")
    with pytest.raises(TypeError, match="method"):
        fl_skeleton.tube_indices(labels, 2, method=2)


def test_host_driver_refuses_bad_geometry():
    C = _ext.C
    a = np.ones((2, 3, 4, 5), np.uint8)
    out = np.empty_like(a)
    with pytest.raises(ValueError, match="2 or 3 spatial dims"):
        C.skeletonize_parallel_host(a.ctypes.data, out.ctypes.data, 1, [3, 4, 5, 2], 1)
    with pytest.raises(ValueError, match="positive sizes"):
        C.skeletonize_parallel_host(a.ctypes.data, out.ctypes.data, 1, [3, 0, 5], 1)
    with pytest.raises(ValueError, match="batch"):
        C.skeletonize_parallel_host(a.ctypes.data, out.ctypes.data, 0, [3, 4, 5], 1)
    with pytest.raises(ValueError, match="alias"):
        C.skeletonize_parallel_host(a.ctypes.data, a.ctypes.data, 1, [3, 4, 5], 1)
    with pytest.raises(ValueError, match="null"):
        C.skeletonize_parallel_host(0, out.ctypes.data, 1, [3, 4, 5], 1)


def test_meta_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        skeletonize(torch.ones(4, 4, device="meta"), method="parallel")


# ------------------------------------------------------------------------------------------------------------
# CUDA: the kernels' answer is the host driver's, voxel for voxel


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_equals_host_driver():
    assert fl_skeleton.cuda_available(), "fastloss._C was built without the CUDA thinning"
    rng = np.random.default_rng(99)
    volumes = [m for _, m in CASES_3D]
    for m in volumes:
        host = skeletonize(m, 3, method="parallel")
        dev = skeletonize(torch.from_numpy(m).cuda())  # the default on CUDA: parallel
        assert dev.device.type == "cuda" and dev.dtype == torch.bool
        assert np.array_equal(dev.cpu().numpy(), host), m.shape
    batch = np.stack([_blobs(rng, (24, 31, 27), 1.6) for _ in range(3)] + [_tubes(rng, (24, 31, 27))])
    assert np.array_equal(skeletonize(torch.from_numpy(batch).cuda()).cpu().numpy(),
                          skeletonize(batch, 3, method="parallel"))
    big = _blobs(rng, (2, 96, 96, 96), 3.0)
    assert np.array_equal(skeletonize(torch.from_numpy(big).cuda().float(), 3).cpu().numpy(),
                          skeletonize(big, 3, method="parallel"))
    flat = np.stack([_blobs(rng, (67, 45), 1.5), _tubes(rng, (67, 45)), np.ones((67, 45), bool)])
    got = skeletonize(torch.from_numpy(flat).cuda(), spatial_dims=2)
    assert np.array_equal(got.cpu().numpy(), np.stack([sk(x) for x in flat]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tube_and_exact():
    rng = np.random.default_rng(7)
    labels = torch.from_numpy(_blobs(rng, (2, 20, 23, 21), 1.4) * rng.integers(1, 3, size=(2, 20, 23, 21)))
    dev = fl_skeleton.tubed_skeleton(labels.cuda(), 3)
    assert dev.device.type == "cuda"
    assert torch.equal(dev.cpu(), fl_skeleton.tubed_skeleton(labels, 3, method="parallel"))
    idx = fl_skeleton.tube_indices(labels.cuda(), 3)
    assert idx.device.type == "cuda" and torch.equal(idx.cpu(), fl_skeleton.tube_indices(labels, 3, method="parallel"))
    with warnings.catch_warnings():  # warned once per process (tests/test_skeleton.py checks the warning)
        warnings.simplefilter("ignore")
        exact = skeletonize(labels.cuda() > 0, 3, method="exact")
    assert torch.equal(exact.cpu(), skeletonize(labels > 0, 3))
