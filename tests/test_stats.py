"""The torch statistics backend: the label fast path (gather/scatter, no one-hot) against the dense
per-voxel terms, values and gradients."""

import pytest
import torch

from fastloss._validation import prepare_target
from fastloss.ops.stats import StatsSpec, _label_stats_softmax, voxel_terms

COLS = ("pg", "p", "pp", "g", "gg", "ce", "count")


def _dense(x, t, spec):
    terms = voxel_terms(x, t, spec)
    return torch.stack([terms[c].sum(dim=2) for c in spec.columns], dim=2)


@pytest.mark.parametrize("C", [2, 3, 9])
@pytest.mark.parametrize("ignore_index", [None, 0, 255])
def test_label_fast_path_equals_dense_terms(C, ignore_index):
    g = torch.Generator().manual_seed(C)
    x = torch.randn(2, C, 7, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, C, (2, 1, 7, 5, 3), generator=g)
    if ignore_index is not None:
        y[:, :, :2] = ignore_index
    t = prepare_target(x, y, ignore_index=ignore_index)
    spec = StatsSpec("softmax", COLS)
    x3 = x.reshape(2, C, -1)
    fast, dense = _label_stats_softmax(x3, t, spec), _dense(x3, t, spec)
    torch.testing.assert_close(fast, dense, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(fast)
    (g1,) = torch.autograd.grad((fast * w).sum(), x)
    (g2,) = torch.autograd.grad((dense * w).sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_label_fast_path_out_of_range_labels_are_ignored_when_unchecked(monkeypatch):
    """With the label check off, a label outside [0, C) is an ignored voxel on every path."""
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 10, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (1, 1, 10), generator=g)
    y[0, 0, 3], y[0, 0, 7] = 5, -2
    t = prepare_target(x, y)
    spec = StatsSpec("softmax", COLS)
    fast = _label_stats_softmax(x, t, spec)
    torch.testing.assert_close(fast, _dense(x, t, spec))
    keep = torch.ones(10, dtype=torch.bool)
    keep[[3, 7]] = False
    t_kept = prepare_target(x[..., keep], y[..., keep])
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "1")
    torch.testing.assert_close(fast, _dense(x[..., keep], t_kept, spec))


@pytest.mark.parametrize("name", ["DiceCE", "DiceFocal", "DiceTopK", "DiceHD"])
def test_compound_checks_labels_once(name, monkeypatch, torch_backend):
    """The parts of a compound loss share one label-range check (it reads every label and syncs),
    and a bad label still raises."""
    import fastloss
    import fastloss._validation as V

    calls = []
    real = V._check_label_range
    monkeypatch.setattr(V, "_check_label_range", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g)
    loss = fastloss.get_loss(name)
    loss(x, y)
    assert len(calls) == 1
    y[0, 0, 0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*found \[3\]"):
        loss(x, y)
