"""fastloss.skeletonize against scikit-image 0.26's skimage.morphology.skeletonize, voxel for voxel."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import fastloss
from fastloss import skeletonize

sk = pytest.importorskip("skimage.morphology").skeletonize


def _blobs(rng, shape, sigma, level=0.5):
    return ndi.gaussian_filter(rng.random(shape), sigma) > level


def _tubes(rng, shape, n=4, radius=(1.0, 3.0)):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    out = np.zeros(shape, bool)
    for _ in range(n):
        a = rng.uniform(0, np.array(shape) - 1)
        b = rng.uniform(0, np.array(shape) - 1)
        d = b - a
        length = max(np.linalg.norm(d), 1e-9)
        d /= length
        rel = grid - a
        t = np.clip(rel @ d, 0, length)
        out |= np.linalg.norm(rel - t[..., None] * d, axis=-1) < rng.uniform(*radius)
    return out


def _cases(nd, count, seed):
    rng = np.random.default_rng(seed)
    hi = 26 if nd == 3 else 70
    for k in range(count):
        shape = tuple(int(s) for s in rng.integers(1, hi, size=nd))
        kind = k % 6
        if kind == 0:
            yield f"noise{shape}", rng.random(shape) < rng.uniform(0.1, 0.9)
        elif kind == 1:
            yield f"blobs{shape}", _blobs(rng, shape, rng.uniform(0.7, 3.0))
        elif kind == 2:
            yield f"tubes{shape}", _tubes(rng, shape)
        elif kind == 3:  # thin sheets / lines: one or two voxels thick along a random axis
            m = np.zeros(shape, bool)
            ax = int(rng.integers(nd))
            idx = [slice(None)] * nd
            c = int(rng.integers(shape[ax]))
            idx[ax] = slice(c, c + int(rng.integers(1, 3)))
            m[tuple(idx)] = True
            yield f"sheet{shape}ax{ax}", m & (rng.random(shape) < 0.97)
        elif kind == 4:
            yield f"full{shape}", np.ones(shape, bool)
        else:
            yield f"blobs_border{shape}", _blobs(rng, shape, 1.5, 0.45)  # touching the image edge


@pytest.mark.parametrize("nd", [2, 3])
def test_equals_skimage_random(nd):
    bad = []
    for name, m in _cases(nd, 90 if nd == 2 else 60, seed=nd):
        ours = skeletonize(m, spatial_dims=nd)
        assert ours.dtype == np.bool_ and ours.shape == m.shape
        if not np.array_equal(ours, sk(m)):
            bad.append(name)
    assert not bad, bad


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (7, 1), (2, 2), (3, 3), (1, 1, 1), (1, 1, 9), (1, 6, 1), (2, 2, 2), (3, 3, 3), (1, 9, 11)]
)
def test_tiny_and_degenerate_shapes(shape):
    for m in (np.ones(shape, bool), np.zeros(shape, bool)):
        assert np.array_equal(skeletonize(m, spatial_dims=len(shape)), sk(m)), (shape, m.any())
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        m = rng.random(shape) < 0.6
        assert np.array_equal(skeletonize(m, spatial_dims=len(shape)), sk(m))


def test_empty_gives_empty():
    assert not skeletonize(np.zeros((5, 6, 7), bool)).any()
    assert not skeletonize(torch.zeros(3, 8, 9), spatial_dims=2).any()


def test_organ_sized_volume():
    rng = np.random.default_rng(7)
    m = _blobs(rng, (48, 41, 37), 3.0)
    t = _tubes(rng, (40, 47, 33), n=5, radius=(2, 4))
    assert np.array_equal(skeletonize(m), sk(m))
    assert np.array_equal(skeletonize(t), sk(t))


@pytest.mark.parametrize("nd", [2, 3])
def test_batched_equals_per_volume(nd):
    rng = np.random.default_rng(11)
    spatial = (13, 17, 11)[:nd] if nd == 3 else (29, 31)
    masks = np.stack([_blobs(rng, spatial, 1.5) for _ in range(6)]).reshape((2, 3) + spatial)
    ours = skeletonize(masks, spatial_dims=nd)
    assert ours.shape == masks.shape
    for i in range(2):
        for j in range(3):
            assert np.array_equal(ours[i, j], sk(masks[i, j]))
    for threads in (1, 2, 5):
        assert np.array_equal(skeletonize(masks, spatial_dims=nd, threads=threads), ours)


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.float16, np.float32, np.float64]
)
def test_dtypes_numpy(dtype):
    rng = np.random.default_rng(3)
    m = _blobs(rng, (12, 15, 14), 1.2)
    values = m * rng.choice([1, 2, 7], size=m.shape)  # any non-zero value is foreground
    got = skeletonize(values.astype(dtype))
    assert got.dtype == np.bool_
    assert np.array_equal(got, sk(m))


@pytest.mark.parametrize(
    "dtype", [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
def test_dtypes_torch(dtype):
    rng = np.random.default_rng(4)
    m = _blobs(rng, (2, 21, 19), 1.2)
    got = skeletonize(torch.from_numpy(m).to(dtype) * (3 if dtype != torch.bool else 1), spatial_dims=2)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.shape == m.shape
    assert np.array_equal(got.numpy(), np.stack([sk(x) for x in m]))


def test_non_contiguous_and_negative_values():
    rng = np.random.default_rng(5)
    m = _blobs(rng, (20, 22, 18), 1.3)
    t = torch.from_numpy(np.ascontiguousarray(m.transpose(2, 0, 1))).permute(1, 2, 0)  # a strided view of m
    assert not t.is_contiguous()
    assert np.array_equal(skeletonize(t).numpy(), sk(m))
    assert np.array_equal(skeletonize(-2.5 * m[::-1, :, ::2]), sk(m[::-1, :, ::2]))


def test_input_untouched_and_exported():
    m = torch.ones(9, 9, dtype=torch.uint8)
    skeletonize(m)
    assert int(m.sum()) == 81
    assert fastloss.skeletonize is skeletonize and "skeletonize" in fastloss.__all__


@pytest.mark.parametrize(
    "bad, kwargs, exc",
    [
        ([[1, 0], [0, 1]], {}, TypeError),
        (np.ones((4, 4), dtype=complex), {}, TypeError),
        (np.array([["a"]]), {}, TypeError),
        (torch.ones(4, 4, dtype=torch.complex64), {}, TypeError),
        (np.ones(5), {}, ValueError),
        (torch.tensor(1.0), {}, ValueError),
        (np.ones((0, 4)), {}, ValueError),
        (np.ones((4, 4)), {"spatial_dims": 3}, ValueError),
        (np.ones((4, 4, 4)), {"spatial_dims": 1}, ValueError),
        (np.ones((4, 4, 4)), {"spatial_dims": 2.0}, TypeError),
        (np.ones((4, 4, 4)), {"spatial_dims": True}, TypeError),
        (np.ones((4, 4)), {"threads": 0}, ValueError),
        (np.ones((4, 4)), {"threads": 1.5}, TypeError),
    ],
)
def test_bad_input(bad, kwargs, exc):
    with pytest.raises(exc):
        skeletonize(bad, **kwargs)


def test_skeleton_properties_3d():
    """Inside the object, one voxel thin along the line, same number of 26-components (Lee preserves them)."""
    rng = np.random.default_rng(9)
    for _ in range(5):
        m = _tubes(rng, (30, 30, 30), n=3, radius=(2, 4))
        s = skeletonize(m)
        assert not (s & ~m).any()
        full = np.ones((3, 3, 3))
        assert ndi.label(s, full)[1] == ndi.label(m, full)[1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_exact_copies_to_cpu_with_warning():
    # method="exact" (scikit-image's answer) runs on the CPU; the default on CUDA, "parallel", thins on the GPU
    # (tests/test_skeleton_parallel.py)
    m = torch.from_numpy(_blobs(np.random.default_rng(1), (10, 12, 14), 1.2))
    with pytest.warns(UserWarning, match="copied to the CPU"):
        got = skeletonize(m.cuda(), method="exact")
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), skeletonize(m))
