"""Output buffers of the CPU kernels: large ones come from a cache that keeps freed blocks mapped.

The gradient ``dL/dx`` of a loss op is as large as the logits (99 MiB for (2, 14, 96³) float32). glibc
maps every allocation over 32 MiB afresh and unmaps it on free, so without a cache a training loop
faults the gradient's pages in on every step: 8 ms of a 38 ms Dice step on this project's 2-core machine,
serial whatever the thread count. :func:`new_output_like` takes buffers of 8 MiB or more from
``csrc/buffer_pool.cpp`` instead: 2 MiB aligned, advised to use transparent huge pages, faulted in once,
and handed back to the cache when the last tensor viewing them dies (the tensor keeps the block's owner
alive, so a block still referenced anywhere, by autograd or a ``.grad``, is never reused).

Like PyTorch's CUDA caching allocator, the cache holds freed blocks for reuse: at most
``FASTLOSS_CPU_CACHE_MB`` MiB (default 1024; ``0`` turns the cache off) in at most 8 blocks, the oldest
freed first. :func:`empty_cache` returns them to the system; :func:`cache_info` reports them.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import _ext

_C = _ext.C  # the compiled extension or None (fastloss._ext is its one import)

MIN_CACHED_BYTES = 8 << 20  # smaller outputs are ordinary torch allocations (glibc's arenas reuse them)
_ENV_LIMIT = "FASTLOSS_CPU_CACHE_MB"


def _available() -> bool:
    return _ext.has("PooledBuffer")


def _limit_from_env() -> int:
    raw = os.environ.get(_ENV_LIMIT, "").strip()
    if not raw:
        return 1024 << 20
    try:
        mib = float(raw)
    except ValueError:
        raise ValueError(f"{_ENV_LIMIT} must be a number of MiB >= 0, got {raw!r}") from None
    if not mib >= 0:
        raise ValueError(f"{_ENV_LIMIT} must be a number of MiB >= 0, got {raw!r}")
    return int(mib * (1 << 20))


def set_cache_limit(mib: float) -> None:
    """Most MiB the cache keeps in freed blocks (0: none, every block is freed when its tensors die)."""
    if isinstance(mib, bool) or not isinstance(mib, (int, float)) or not mib >= 0:
        raise ValueError(f"expected a cache limit >= 0 MiB, got {mib!r}")
    if _available():
        _C.buffer_cache_set_limit(int(mib * (1 << 20)))


def empty_cache() -> None:
    """Returns every freed block the cache holds to the system (blocks in use stay with their tensors)."""
    if _available():
        _C.buffer_cache_empty()


def cache_info() -> dict:
    """``cached_bytes``, ``cached_blocks``, ``limit_bytes``, ``hits`` and ``misses`` of the cache."""
    if not _available():
        return {"cached_bytes": 0, "cached_blocks": 0, "limit_bytes": 0, "hits": 0, "misses": 0}
    return dict(_C.buffer_cache_info())


def new_output_like(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An uninitialised CPU tensor with ``torch.empty_like(x, dtype=dtype)``'s shape and strides (so a
    channels-last input gets a channels-last output), for a kernel to fill; from the cache when it has
    ``MIN_CACHED_BYTES`` or more and the cache is on."""
    dtype = x.dtype if dtype is None else dtype
    nbytes = x.numel() * dtype.itemsize
    if nbytes < MIN_CACHED_BYTES or not _available() or x.device.type != "cpu" or _limit_from_env() == 0:
        return torch.empty_like(x, dtype=dtype)
    # the strides empty_like would give (x's own where x is dense, else row-major), without allocating
    strides = torch.empty_like(x, dtype=dtype, device="meta").stride()
    block = _C.PooledBuffer(nbytes)
    flat = torch.frombuffer(block, dtype=dtype, count=x.numel())  # holds `block` until the storage dies
    return flat.as_strided(x.shape, strides)


if _available():
    _C.buffer_cache_set_limit(_limit_from_env())
