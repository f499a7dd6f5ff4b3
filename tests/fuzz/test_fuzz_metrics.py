"""Fuzz: the metrics (``fastloss.metrics.monai_compat``: the compiled mask helpers, border extraction and
``edt_at`` underneath) against MONAI 1.6.1's ``compute_*`` functions on random binary masks: 2D and 3D,
size-1 dims, empty and full channels, anisotropic spacings, percentiles, and memory layouts (permuted,
stepped, expanded, padded views over poison). See ``_fuzz.py`` for the budgets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")
monai_metrics = pytest.importorskip("monai.metrics")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _fuzz import TORCH_LAYOUTS, fuzz_settings, torch_layout  # noqa: E402
from fastloss.metrics import monai_compat as M  # noqa: E402


@st.composite
def mask_pairs(draw):
    B = draw(st.integers(1, 2))
    C = draw(st.integers(1, 3))
    sd = draw(st.integers(2, 3))
    spatial = tuple(draw(st.integers(1, 8)) for _ in range(sd))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    masks = []
    for _ in range(2):
        dens = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
        m = torch.rand((B, C) + spatial, generator=g) < dens
        if draw(st.booleans()):  # a blob: a box, so that borders are long and distances larger
            m = torch.zeros_like(m)
            lo = [draw(st.integers(0, s - 1)) for s in spatial]
            hi = [draw(st.integers(a + 1, s)) for a, s in zip(lo, spatial)]
            m[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        dtype = draw(st.sampled_from([torch.bool, torch.uint8, torch.float32, torch.int64]))
        ref, view = torch_layout(m.to(dtype), draw(st.sampled_from(TORCH_LAYOUTS)), draw)
        masks.append((ref, view))
    spacing = draw(st.sampled_from([None, "aniso"]))
    if spacing == "aniso":
        spacing = [draw(st.floats(0.3, 3.0)) for _ in range(sd)]
    return masks, spacing


def _close(got, want, what):
    got, want = got.double(), torch.as_tensor(want).double()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True, msg=what)


@fuzz_settings(60)
@given(mask_pairs(), st.booleans(), st.sampled_from([None, 50.0, 95.0, 100.0]), st.booleans())
def test_metrics_match_monai(case, include_background, percentile, directed):
    ((p_ref, p), (g_ref, g)), spacing = case
    p_ref, g_ref = p_ref.contiguous().float(), g_ref.contiguous().float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _close(M.compute_dice(p, g, include_background=include_background),
               monai_metrics.compute_dice(p_ref, g_ref, include_background=include_background), "dice")
        _close(M.compute_hausdorff_distance(p, g, include_background=include_background, percentile=percentile,
                                            directed=directed, spacing=spacing),
               monai_metrics.compute_hausdorff_distance(p_ref, g_ref, include_background=include_background,
                                                        percentile=percentile, directed=directed, spacing=spacing),
               "hausdorff")
        _close(M.compute_average_surface_distance(p, g, include_background=include_background, symmetric=directed,
                                                  spacing=spacing),
               monai_metrics.compute_average_surface_distance(p_ref, g_ref, include_background=include_background,
                                                              symmetric=directed, spacing=spacing),
               "average surface distance")
        C = p_ref.shape[1] - (0 if include_background or p_ref.shape[1] == 1 else 1)
        tol = list(np.linspace(0.5, 2.5, max(C, 1)))
        _close(M.compute_surface_dice(p, g, tol, include_background=include_background, spacing=spacing),
               monai_metrics.compute_surface_dice(p_ref, g_ref, tol, include_background=include_background,
                                                  spacing=spacing),
               "surface dice")
