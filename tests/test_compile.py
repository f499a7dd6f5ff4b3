"""``torch.compile(fullgraph=True)`` through every loss, on CPU, and ``torch.library.opcheck`` of the custom ops.

Each loss is compiled as part of a tiny model (a Conv3d followed by the loss), forward and backward, and
must give the eager values and gradients (of the input and of the conv parameters). ``fullgraph=True``
makes any graph break an error. Most losses compile with the ``aot_eager`` backend (full Dynamo tracing and
AOTAutograd, no code generation: cheap); a few go through Inductor's code generation as well. A second
input pair with other labels must reuse the same graph and still give the eager values: nothing that
depends on the data (class weights, distance maps, TopK counts) may be baked into the graph or guarded on.

The opcheck tests add what ``test_edt.py``, ``test_triton_stats.py`` and ``test_triton_topk.py`` do not
cover: the backward custom ops themselves, soft targets / masks / voxel maps, other activations,
``ignore_index``, half inputs, batched 3D and 1D transforms.
"""

import os

import pytest
import torch
from torch import nn
from torch._dynamo.backends.registry import lookup_backend

import fastloss.losses as L
from fastloss.registry import PAPER_LOSSES, get_loss, paper_loss_names

C = 3
SPATIAL = (6, 7, 5)

# Names with distance maps: the fastloss::edt custom op must appear in the graph. DiceBD starts at
# alpha = 1 (Dice only), so it is also compiled later in its schedule (test_dice_boundary_schedule...).
MAP_NAMES = {"pCE", "DiceHD", "BD", "HD"}
MAP_CLASSES = {"BoundaryLoss", "HausdorffDTLoss", "DistancePenalizedCELoss", "DiceHausdorffDTLoss"}
# every loss class that builds with its defaults (DeepSupervisionLoss wraps another loss: tests/test_nnunet.py)
LOSS_CLASSES = sorted(n for n in L.__all__ if isinstance(getattr(L, n), type) and n != "DeepSupervisionLoss")



@pytest.fixture(autouse=True)
def _fresh_dynamo(torch_backend):
    """Torch backend, and a fresh Dynamo cache per test (so no test hits the recompile limit of another)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class _Recorder:
    """A compile backend that records the graphs Dynamo hands over, then compiles them with ``inner``."""

    def __init__(self, inner: str):
        self.inner = lookup_backend(inner)
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return self.inner(gm, example_inputs)

    def targets(self) -> set:
        return {str(n.target) for g in self.graphs for n in g.graph.nodes if n.op == "call_function"}


class ModelAndLoss(nn.Module):
    def __init__(self, loss: nn.Module, channels: int = C):
        super().__init__()
        self.net = nn.Conv3d(1, channels, 3, padding=1)
        self.loss = loss

    def forward(self, x, y):
        return self.loss(self.net(x), y)


def _inputs(seed: int, channels: int = C, ignore_index=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 1) + SPATIAL, generator=gen)
    y = torch.randint(0, channels, (2, 1) + SPATIAL, generator=gen)
    if ignore_index is not None:
        y.view(-1)[::5] = ignore_index
    return x, y


def _step(module: nn.Module, fn, x, y):
    """Forward + backward; returns (value, [dL/dx, dL/dW, dL/db])."""
    module.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_(True)
    out = fn(xx, y)
    out.sum().backward()
    return out.detach(), [xx.grad] + [p.grad.clone() for p in module.net.parameters()]


def _assert_matches_eager(loss: nn.Module, backend: str = "aot_eager", channels: int = C, ignore_index=None,
                          rtol=1e-5, atol=1e-6, seeds=(0, 1)) -> _Recorder:
    torch.manual_seed(0)
    model = ModelAndLoss(loss, channels)
    rec = _Recorder(backend)
    compiled = torch.compile(model, fullgraph=True, backend=rec)
    for seed in seeds:
        x, y = _inputs(seed, channels, ignore_index)
        ref, ref_grads = _step(model, model, x, y)
        got, grads = _step(model, compiled, x, y)
        assert torch.isfinite(ref).all()
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
        for g, r in zip(grads, ref_grads):
            assert g is not None and r is not None
            torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
    # one graph for every input pair: no guard on tensor values, no graph break
    assert len(rec.graphs) == 1, f"{len(rec.graphs)} graphs compiled"
    return rec


# ----------------------------------------------------------------------------------------------------
# every paper name and every class, traced whole (aot_eager)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", paper_loss_names())
def test_paper_loss_fullgraph(name):
    rec = _assert_matches_eager(get_loss(name))
    if name in MAP_NAMES:
        assert "fastloss.edt" in rec.targets()


# classes whose MONAI defaults do not fit the 3-class logits the test feeds: MCCLoss has no activation by
# default (logits give NaN, as MONAI's), AsymmetricUnifiedFocalLoss is binary by default (MONAI refuses 3
# channels); they get the arguments that make the call meaningful
_CLASS_ARGS = {"MCCLoss": dict(softmax=True), "AsymmetricUnifiedFocalLoss": dict(num_classes=3, rare_classes=[1])}


@pytest.mark.parametrize("cls_name", LOSS_CLASSES)
def test_default_class_fullgraph(cls_name):
    rec = _assert_matches_eager(getattr(L, cls_name)(**_CLASS_ARGS.get(cls_name, {})))
    if cls_name in MAP_CLASSES:
        assert "fastloss.edt" in rec.targets()


@pytest.mark.parametrize(
    "name",
    paper_loss_names(),
)
def test_paper_loss_ignore_index_fullgraph(name):
    """ignore_index (label 255 on a fifth of the voxels): masks are tensors, never host values."""
    rec = _assert_matches_eager(get_loss(name, ignore_index=255), ignore_index=255)
    if name in MAP_NAMES:
        assert "fastloss.edt" in rec.targets()


def test_dice_boundary_schedule_recompiles_with_alpha():
    """DiceBD in its schedule (alpha < 1: the boundary part runs through the EDT custom op); after
    step_epoch the compiled model must use the new alpha, not the one it was traced with."""
    torch.manual_seed(0)
    loss = get_loss("DiceBD")
    loss.set_epoch(40)  # alpha = 0.6
    model = ModelAndLoss(loss)
    rec = _Recorder("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=rec)
    x, y = _inputs(3)
    values = []
    for epoch in (40, 41, 99, 150):
        loss.set_epoch(epoch)
        ref, ref_grads = _step(model, model, x, y)
        got, grads = _step(model, compiled, x, y)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
        values.append(got)
    assert "fastloss.edt" in rec.targets()
    assert loss.alpha == pytest.approx(0.01)  # epochs 99 and 150: alpha_min
    assert values[0] != values[1] and values[2] == values[3]  # alpha changed between 40 and 41


def test_dice_hd_last_alpha_side_effect():
    """DiceHD stores the adaptive alpha on the module: the compiled call must do the same."""
    torch.manual_seed(0)
    loss = get_loss("DiceHD")
    model = ModelAndLoss(loss)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, y = _inputs(4)
    _step(model, model, x, y)
    ref = loss.last_alpha.clone()
    loss.last_alpha = None
    _step(model, compiled, x, y)
    assert loss.last_alpha is not None
    torch.testing.assert_close(loss.last_alpha, ref, rtol=1e-5, atol=1e-7)


def test_out_of_range_labels_skip_the_host_check_when_compiled():
    """Eager: an out-of-range label is a ValueError (one host sync). Compiled: the check is skipped (no
    sync in the graph) and the voxel is ignored, as with ignore_index."""
    loss = get_loss("DiceCE")
    x, y = _inputs(5)
    y.view(-1)[7] = C + 4
    logits = torch.randn((2, C) + SPATIAL)
    with pytest.raises(ValueError, match="labels must lie in"):
        loss(logits, y)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(logits, y)
    y_ign = y.clone()
    y_ign.view(-1)[7] = 255
    torch.testing.assert_close(got, get_loss("DiceCE", ignore_index=255)(logits, y_ign), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Inductor code generation for representative losses (CPU C++ kernels: slower to compile)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["DiceCE", "DiceTopK", "DiceHD"])
def test_inductor(name):
    rec = _assert_matches_eager(get_loss(name), backend="inductor", rtol=1e-4, atol=1e-5)
    if name == "DiceHD":
        assert "fastloss.edt" in rec.targets()


# ----------------------------------------------------------------------------------------------------
# the Triton custom ops under torch.compile (kernels run by the interpreter on CPU tensors)
# ----------------------------------------------------------------------------------------------------
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not _INTERPRET, reason="Triton kernels on CPU tensors need TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", ["DiceCE", "DiceFocal", "DiceHD", "TopK"])
def test_triton_backend_fullgraph(name, monkeypatch):
    """The kernels' custom ops (fake kernels for tracing, registered autograd) inside the compiled graph."""
    pytest.importorskip("triton")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    torch.manual_seed(0)
    rec = _assert_matches_eager(get_loss(name), seeds=(0,))
    ops = {t for t in rec.targets() if t.startswith("fastloss.")}
    assert any(t.startswith("fastloss.triton_") for t in ops), ops
    if name == "DiceHD":
        assert "fastloss.edt" in ops
    # and the compiled Triton path agrees with the torch backend
    x, y = _inputs(0)
    torch.manual_seed(0)
    model = ModelAndLoss(get_loss(name))
    got, grads = _step(model, torch.compile(model, fullgraph=True, backend="aot_eager"), x, y)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref, ref_grads = _step(model, model, x, y)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# torch.library.opcheck: what the op-specific test files do not cover
# ----------------------------------------------------------------------------------------------------
def test_opcheck_edt_batched_3d_squared_and_1d():
    gen = torch.Generator().manual_seed(20)
    m3 = (torch.rand(3, 5, 6, 4, generator=gen) > 0.3).to(torch.uint8)
    m3[1] = 1  # a volume with no background: inf
    torch.library.opcheck(torch.ops.fastloss.edt.default, (m3, [1.0, 0.5, 2.0], True, 1))
    torch.library.opcheck(torch.ops.fastloss.edt.default, (m3, [1.0, 1.0, 1.0], False, 2))
    m1 = (torch.rand(4, 11, generator=gen) > 0.5).to(torch.uint8)
    torch.library.opcheck(torch.ops.fastloss.edt.default, (m1, [0.7], False, 1))


triton_only = pytest.mark.skipif(
    not torch.cuda.is_available() and not _INTERPRET, reason="Triton kernels need a GPU or TRITON_INTERPRET=1"
)


def _stats_ops():
    pytest.importorskip("triton")
    from fastloss.ops import triton_stats  # noqa: F401  (registers the ops)

    return torch.ops.fastloss.triton_class_stats.default, torch.ops.fastloss.triton_class_stats_backward.default


@triton_only
@pytest.mark.parametrize(
    "act, columns, target_kind, dtype",
    [
        ("sigmoid", "pg,p,pp,g,ce,focal,map_p,map_sqerr,count", "soft_mask_map", torch.float32),
        ("none", "pg,p,ce,ce_pow,focal,map_ce,count", "labels_ignore_map", torch.float32),
        ("softmax", "pg,p,g,sqerr_pos,sqerr_neg,absdiff,ce,count", "labels_ignore", torch.bfloat16),
        ("sigmoid", "pg,p,g,ce,focal,count", "labels_regions_ignore", torch.float32),
    ],
)
def test_opcheck_class_stats_forward_and_backward(act, columns, target_kind, dtype):
    fwd, bwd = _stats_ops()
    gen = torch.Generator().manual_seed(21)
    B, Cc, N = 2, 3, 37
    if act == "none":
        x = (torch.rand(B, Cc, N, generator=gen) * 0.9 + 0.05).to(dtype)
    else:
        x = torch.randn(B, Cc, N, generator=gen).to(dtype)
    labels = soft = mask = vmap = regions = None
    ignore = None
    if target_kind == "soft_mask_map":
        soft = torch.softmax(torch.randn(B, Cc, N, generator=gen), dim=1)
        mask = (torch.rand(B, N, generator=gen) > 0.2).float()
        vmap = torch.randn(B, Cc, N, generator=gen)
    else:
        labels = torch.randint(0, Cc, (B, N), generator=gen)
        labels[:, ::4] = 255
        ignore = 255
        if target_kind == "labels_ignore_map":
            vmap = torch.rand(B, 1, N, generator=gen) * 3  # one map shared by the classes
        if target_kind == "labels_regions_ignore":  # labels 0..4, regions {1, 2}, {2}, {4} as a bit table
            labels = torch.randint(0, 5, (B, N), generator=gen)
            labels[:, ::5] = 255
            regions = torch.tensor([0, 1, 3, 0, 4])
    log_eps = 1e-3 if act == "none" else 0.0
    args = (x.requires_grad_(True), labels, soft, mask, vmap, regions, act, columns, 2.0, 0.25, 0.3, log_eps, ignore)
    torch.library.opcheck(fwd, args)
    K = len(columns.split(","))
    grad = torch.randn(B, Cc, K, generator=gen)
    torch.library.opcheck(bwd, (grad, x.detach()) + args[1:])


@triton_only
def test_opcheck_voxel_ce_ignore_and_backward():
    pytest.importorskip("triton")
    from fastloss.ops import triton_topk  # noqa: F401  (registers the ops)

    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, 4, 29, generator=gen)
    lab = torch.randint(0, 4, (2, 29), generator=gen)
    lab[:, ::3] = -100
    torch.library.opcheck(torch.ops.fastloss.triton_voxel_ce.default, (x.clone().requires_grad_(True), lab, -100))
    grad = torch.randn(2, 29, generator=gen)
    torch.library.opcheck(torch.ops.fastloss.triton_voxel_ce_backward.default, (grad, x, lab, -100))
    torch.library.opcheck(torch.ops.fastloss.triton_voxel_ce_backward.default, (grad, x.bfloat16(), lab, None))
    # ties at the threshold
    v = torch.randint(0, 4, (300,), generator=gen).float()
    torch.library.opcheck(torch.ops.fastloss.triton_topk_select.default, (v, 151))
