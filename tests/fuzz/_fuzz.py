"""Shared pieces of the fuzz harness (tests/fuzz/): the hypothesis settings of each budget and the
strategies for memory layouts.

Budgets (``FASTLOSS_FUZZ``):

- ``ci`` (default): derandomised (the same examples on every run and machine), 36 to 450 examples per
  test: the whole directory in about a minute on 2 cores;
- ``smoke``: derandomised, a handful per test (the sanitizer's CI subset, ``tools/sanitize.sh``);
- ``long``: random (a new seed every run; a failure prints the ``@reproduce_failure`` blob to replay it),
  ``FASTLOSS_FUZZ_EXAMPLES`` examples per test (default 1000): ``FASTLOSS_FUZZ=long pytest tests/fuzz``, or
  under the ASan/UBSan build ``tools/sanitize.sh --fuzz``.

Layouts: every tensor a test feeds a kernel is built with a random memory layout of the same values:
contiguous, permuted (channels-last and any other order), stepped (every other element of a larger
buffer), zero-stride expands (a broadcast dim), and padded ``as_strided`` views with gaps between
elements; numpy inputs also get negative strides and big-endian byte order. The bytes around and between
the elements are poison (NaN for floats, out-of-range values for integers), so a kernel that reads an
element it was not given changes the answer.
"""

from __future__ import annotations

import os
from typing import Sequence, Tuple

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

BUDGET = os.environ.get("FASTLOSS_FUZZ", "ci").strip().lower() or "ci"
if BUDGET not in ("smoke", "ci", "long"):
    raise ValueError(f"FASTLOSS_FUZZ must be smoke, ci or long, got {BUDGET!r}")
_EXAMPLES = os.environ.get("FASTLOSS_FUZZ_EXAMPLES")


def fuzz_settings(ci_examples: int) -> settings:
    """The settings of one fuzz test: ``3 * ci_examples`` examples in CI, a fifth of ``ci_examples`` (at least
    3) for ``smoke``, ``FASTLOSS_FUZZ_EXAMPLES`` (default 1000) for ``long``."""
    if BUDGET == "long":
        n = int(_EXAMPLES) if _EXAMPLES else 1000
    elif _EXAMPLES:
        n = int(_EXAMPLES)
    else:  # ci: three times the counts written in the tests (about a minute for the directory on 2 cores)
        n = max(3, ci_examples // 5) if BUDGET == "smoke" else 3 * ci_examples
    return settings(
        max_examples=n,
        derandomize=BUDGET != "long",
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


TORCH_LAYOUTS = ("contiguous", "permuted", "stepped", "expanded", "padded")
NUMPY_LAYOUTS = TORCH_LAYOUTS + ("flipped", "big_endian")


def _poison(dtype: torch.dtype):
    if dtype.is_floating_point:
        return float("nan")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).max if dtype != torch.uint8 else 251  # an out-of-range label / a non-zero mask


def torch_layout(values: torch.Tensor, kind: str, draw, keep_dims: Sequence[int] = ()) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(reference, view)``: ``view`` holds ``reference``'s values in the memory layout ``kind``.

    ``reference`` is ``values`` except for ``expanded``, which repeats the first entry along some dims (a
    zero stride needs equal values there); ``keep_dims`` are never expanded (e.g. the class dim of labels
    would be meaningless broadcast)."""
    shape = tuple(values.shape)
    nd = len(shape)
    if kind == "contiguous" or nd == 0:
        return values, values.clone()
    if kind == "permuted":
        perm = draw(st.permutations(range(nd)))
        inv = [perm.index(i) for i in range(nd)]
        return values, values.permute(*perm).contiguous().permute(*inv)
    if kind == "stepped":
        steps = [draw(st.integers(1, 3)) for _ in range(nd)]
        offs = [draw(st.integers(0, 2)) for _ in range(nd)]
        big = torch.full([o + s * n + 1 for o, s, n in zip(offs, steps, shape)], _poison(values.dtype), dtype=values.dtype)
        view = big[tuple(slice(o, o + s * n, s) for o, s, n in zip(offs, steps, shape))]
        view.copy_(values)
        return values, view
    if kind == "expanded":
        dims = [d for d in range(nd) if shape[d] > 1 and d not in keep_dims]
        if not dims:
            return values, values.clone()
        chosen = draw(st.lists(st.sampled_from(dims), min_size=1, max_size=len(dims), unique=True))
        base = values
        for d in chosen:
            base = base.narrow(d, 0, 1)
        base = base.clone()
        view = base.expand(shape)
        return view.contiguous(), view
    if kind == "padded":
        # an as_strided view over a poisoned buffer: dims in a random order with gaps between elements
        perm = draw(st.permutations(range(nd)))
        strides = [0] * nd
        size = 1
        for d in reversed(perm):  # innermost first
            strides[d] = size * draw(st.integers(1, 2)) + draw(st.integers(0, 1))
            size = strides[d] * max(shape[d], 1)
        offset = draw(st.integers(0, 3))
        buf = torch.full((offset + size + 4,), _poison(values.dtype), dtype=values.dtype)
        view = buf.as_strided(shape, strides, offset)
        view.copy_(values)
        return values, view
    raise ValueError(kind)


def numpy_layout(values: np.ndarray, kind: str, draw) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`torch_layout` for numpy arrays, plus negative strides (``flipped``: every size-1 axis and a
    random one reversed twice over a reversed copy) and big-endian byte order."""
    if kind == "flipped":
        # a reversed copy read backwards: the same values through negative strides, size-1 axes included
        flip = [d for d in range(values.ndim) if values.shape[d] == 1 or draw(st.booleans())]
        view = np.ascontiguousarray(np.flip(values, axis=flip)) if flip else values.copy()
        view = np.flip(view, axis=flip) if flip else view
        return values, view
    if kind == "big_endian":
        if values.dtype.itemsize == 1:
            return values, values.copy()
        return values, values.astype(values.dtype.newbyteorder(">"))
    t = torch.from_numpy(np.ascontiguousarray(values))
    ref, view = torch_layout(t, kind, draw)
    return ref.numpy(), view.numpy()
