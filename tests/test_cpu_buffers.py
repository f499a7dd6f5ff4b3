"""The CPU output-buffer cache (csrc/buffer_pool.cpp, fastloss/ops/cpu_buffers.py): layouts, reuse only
after the last tensor dies, limits, and gradients identical with the cache on and off."""

import gc
import threading

import pytest
import torch

import fastloss
from fastloss.ops import cpu_buffers

pytestmark = pytest.mark.skipif(not cpu_buffers._available(), reason="fastloss._C has no buffer cache")

BIG = (2, 5, 64, 64, 64)  # 10 MiB of float32: over MIN_CACHED_BYTES


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv("FASTLOSS_CPU_CACHE_MB", raising=False)
    gc.collect()
    cpu_buffers.empty_cache()
    yield
    cpu_buffers.set_cache_limit(1024)
    cpu_buffers.empty_cache()


def _delta(before, key):
    return cpu_buffers.cache_info()[key] - before[key]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_new_output_like_has_empty_likes_shape_and_strides(layout, dtype):
    x = torch.empty(BIG)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "sliced":
        x = torch.empty(2, 5, 64, 64, 80)[..., 3:67]  # not dense: empty_like gives row-major strides
    before = cpu_buffers.cache_info()
    out = cpu_buffers.new_output_like(x, dtype)
    ref = torch.empty_like(x, dtype=dtype)
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.stride() == ref.stride()
    assert _delta(before, "misses") == 1  # it came from the cache
    assert out.data_ptr() % (2 << 20) == 0
    out.fill_(1.5)  # every element is writable, none shared with another
    assert out.sum(dtype=torch.float64).item() == 1.5 * out.numel()


def test_small_outputs_and_a_disabled_cache_are_ordinary_allocations(monkeypatch):
    before = cpu_buffers.cache_info()
    small = cpu_buffers.new_output_like(torch.empty(2, 3, 32, 32, 32))  # 768 KiB
    assert small.shape == (2, 3, 32, 32, 32)
    monkeypatch.setenv("FASTLOSS_CPU_CACHE_MB", "0")
    big = cpu_buffers.new_output_like(torch.empty(BIG))
    assert big.shape == BIG
    assert _delta(before, "misses") == 0 and _delta(before, "hits") == 0


def test_a_block_returns_only_when_its_last_view_dies():
    out = cpu_buffers.new_output_like(torch.empty(BIG))
    ptr = out.data_ptr()
    view = out[1, 2:]  # a view keeps the storage, hence the block
    before = cpu_buffers.cache_info()
    del out
    gc.collect()
    assert _delta(before, "cached_blocks") == 0
    other = cpu_buffers.new_output_like(torch.empty(BIG))
    assert other.data_ptr() != ptr  # not handed out while the view lives
    del view
    gc.collect()
    assert _delta(before, "cached_blocks") == 1
    again = cpu_buffers.new_output_like(torch.empty(BIG))
    assert again.data_ptr() == ptr and _delta(before, "hits") == 1
    # a cache hit takes the block off the free list: the cache holds nothing again, and an output made
    # while `again` lives is another block (a block left on the list would be handed out twice)
    assert _delta(before, "cached_blocks") == 0 and _delta(before, "cached_bytes") == 0
    third = cpu_buffers.new_output_like(torch.empty(BIG))
    assert third.data_ptr() != again.data_ptr() and _delta(before, "misses") == 2
    third.fill_(1.0)
    again.fill_(2.0)
    assert third.min().item() == 1.0  # the two never share memory
    del other, again, third


def test_a_gradient_kept_in_grad_is_never_overwritten():
    """The loss's gradient lands in x.grad (autograd takes the kernel's buffer); while the user keeps it,
    the next step's gradient must be another block, and the kept one must keep its values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BIG, generator=g).requires_grad_()
    y = torch.randint(0, BIG[1], (BIG[0], 1) + BIG[2:], generator=g)
    loss = fastloss.DiceLoss(to_onehot_y=True, softmax=True)
    loss(x, y).backward()
    kept = x.grad
    snapshot = kept.clone()
    x.grad = None
    with torch.no_grad():
        x.mul_(0.5)  # a different gradient
    loss(x, y).backward()
    assert x.grad.data_ptr() != kept.data_ptr()
    assert torch.equal(kept, snapshot)
    assert not torch.equal(x.grad, snapshot)


def test_steps_reuse_the_freed_gradient_and_match_the_uncached_bits(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BIG, generator=g).requires_grad_()
    y = torch.randint(0, BIG[1], (BIG[0], 1) + BIG[2:], generator=g)
    loss = fastloss.DiceCELoss(to_onehot_y=True, softmax=True)

    def grad():
        loss(x, y).backward()
        out = x.grad
        x.grad = None
        return out

    first = grad()
    ptr, ref = first.data_ptr(), first.clone()
    del first
    before = cpu_buffers.cache_info()
    second = grad()
    assert second.data_ptr() == ptr and _delta(before, "hits") >= 1
    assert torch.equal(second, ref)
    monkeypatch.setenv("FASTLOSS_CPU_CACHE_MB", "0")
    assert torch.equal(grad(), ref)


def test_best_fit_never_pins_a_much_larger_block():
    large = cpu_buffers.new_output_like(torch.empty(2, 8, 64, 64, 64))  # 16 MiB
    ptr = large.data_ptr()
    del large
    gc.collect()
    small = cpu_buffers.new_output_like(torch.empty(BIG))  # 10 MiB: would waste over a quarter of 16
    assert small.data_ptr() != ptr
    fits = cpu_buffers.new_output_like(torch.empty(2, 7, 64, 64, 64))  # 14 MiB
    assert fits.data_ptr() == ptr


def test_limit_empty_cache_and_blocks_freed_from_another_thread():
    out = cpu_buffers.new_output_like(torch.empty(BIG))
    holder = [out]
    del out
    t = threading.Thread(target=holder.clear)  # the last reference dies on another thread
    t.start()
    t.join()
    gc.collect()
    info = cpu_buffers.cache_info()
    assert info["cached_blocks"] == 1 and info["cached_bytes"] == 10 << 20
    cpu_buffers.empty_cache()
    assert cpu_buffers.cache_info()["cached_bytes"] == 0

    cpu_buffers.set_cache_limit(0)
    out = cpu_buffers.new_output_like(torch.empty(BIG))
    del out
    gc.collect()
    assert cpu_buffers.cache_info()["cached_blocks"] == 0  # over the limit: freed at once
    cpu_buffers.set_cache_limit(15)  # MiB: room for one 10 MiB block, not two
    a, b = cpu_buffers.new_output_like(torch.empty(BIG)), cpu_buffers.new_output_like(torch.empty(BIG))
    del a, b
    gc.collect()
    info = cpu_buffers.cache_info()
    assert info["cached_blocks"] == 1 and info["limit_bytes"] == 15 << 20


def test_at_most_eight_free_blocks_are_kept():
    outs = [cpu_buffers.new_output_like(torch.empty(BIG)) for _ in range(10)]
    del outs
    gc.collect()
    assert cpu_buffers.cache_info()["cached_blocks"] == 8


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", True])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="cache limit"):
        cpu_buffers.set_cache_limit(bad)


def test_bad_environment_limit_and_block_size_are_refused(monkeypatch):
    monkeypatch.setenv("FASTLOSS_CPU_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="FASTLOSS_CPU_CACHE_MB"):
        cpu_buffers._limit_from_env()
    monkeypatch.setenv("FASTLOSS_CPU_CACHE_MB", "-5")
    with pytest.raises(ValueError, match="FASTLOSS_CPU_CACHE_MB"):
        cpu_buffers._limit_from_env()
    with pytest.raises(ValueError, match="bytes > 0"):
        cpu_buffers._C.PooledBuffer(0)
