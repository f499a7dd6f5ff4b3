"""The CUDA EDT against the CPU path and scipy. Skipped without a GPU (conftest)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastloss.distance import cuda_available, distance_field, edt, signed_distance

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build():
    if not cuda_available():
        pytest.skip("fastloss._C was built without CUDA")


def _check(mask_np, spacing, sd):
    m = torch.from_numpy(mask_np).cuda()
    gpu = edt(m, spacing, spatial_dims=sd)
    assert gpu.is_cuda and gpu.dtype == torch.float32
    cpu = edt(mask_np, spacing, spatial_dims=sd)
    g = gpu.cpu().numpy()
    assert np.array_equal(np.isinf(g), np.isinf(cpu))
    fin = np.isfinite(cpu)
    np.testing.assert_allclose(g[fin], cpu[fin], rtol=1e-6, atol=1e-6)
    flat = mask_np.reshape((-1,) + mask_np.shape[mask_np.ndim - sd :])
    for v, got in zip(flat, g.reshape(flat.shape)):
        if v.all():
            assert np.isinf(got).all()
        else:
            np.testing.assert_allclose(got, ndimage.distance_transform_edt(v, sampling=spacing), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(31,), (13, 9), (1, 17), (33, 1), (7, 11, 5), (17, 1, 19), (1, 1, 1)])
@pytest.mark.parametrize("aniso", [False, True])
def test_gpu_matches_cpu_and_scipy(shape, aniso):
    rng = np.random.default_rng(abs(hash((shape, aniso))) % 2**32)
    spacing = tuple(rng.uniform(0.3, 3.0, len(shape))) if aniso else None
    for density in (0.1, 0.6, 0.97):
        _check(rng.random(shape) < density, spacing, len(shape))


@pytest.mark.parametrize("sd", [2, 3])
def test_gpu_batches_all_fg_all_bg(sd):
    rng = np.random.default_rng(sd)
    mask = rng.random((2, 3) + (19, 14, 9)[:sd]) < 0.8
    mask[0, 1] = True
    mask[1, 0] = False
    _check(mask, (1.3, 0.6, 2.1)[:sd], sd)
    g = edt(torch.from_numpy(mask).cuda(), spatial_dims=sd, squared=True).cpu()
    assert torch.isinf(g[0, 1]).all() and (g[1, 0] == 0).all()


def test_gpu_spheres_128():
    zz, yy, xx = np.mgrid[:64, :96, :80]
    m = ((zz - 30) ** 2 + (yy - 50) ** 2 + (xx - 41) ** 2) > 20**2
    _check(m, (1.0, 0.7, 1.9), 3)


def test_gpu_maps_match_cpu():
    rng = np.random.default_rng(11)
    lab = torch.from_numpy(rng.integers(0, 4, (2, 12, 13, 14)))
    onehot = torch.nn.functional.one_hot(lab, 5).permute(0, 4, 1, 2, 3).contiguous()  # class 4 absent
    for fn in (lambda x: signed_distance(x, (1.0, 2.0, 0.5)), distance_field):
        cpu = fn(onehot)
        gpu = fn(onehot.cuda())
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-5)


def test_gpu_uses_current_stream_without_sync():
    m = torch.rand(4, 32, 32, 32, device="cuda") > 0.5
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        d = edt(m, squared=True)
    s.synchronize()
    torch.testing.assert_close(d.cpu(), edt(m.cpu(), squared=True))


@pytest.mark.slow
def test_gpu_indexing_beyond_2_31_voxels():
    # 2^31 + a bit voxels in a batch: 64-bit offsets (needs ~2 GiB mask + 8 GiB out + 16 GiB scratch)
    free, _ = torch.cuda.mem_get_info()
    n_vol = 2**31 // (512 * 512 * 128) + 1  # 17 volumes of 512x512x128
    if free < n_vol * 512 * 512 * 128 * 14:
        pytest.skip("not enough GPU memory")
    m = torch.ones(n_vol, 128, 512, 512, dtype=torch.bool, device="cuda")
    m[-1, 64, 100, 200] = False  # only the last volume (beyond 2^31) has background
    d = edt(m, squared=True)
    last = d[-1]
    assert torch.isinf(d[0]).all()
    assert last[64, 100, 200] == 0
    zz, yy, xx = 64, 100, 200
    for z, y, x in [(0, 0, 0), (127, 511, 511), (64, 100, 201), (70, 90, 250)]:
        assert last[z, y, x].item() == float((z - zz) ** 2 + (y - yy) ** 2 + (x - xx) ** 2)
