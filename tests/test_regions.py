"""Region-based training from integer labels (``regions=``): every region-capable loss on integer labels and a
label-to-regions table equals the same loss on the one-hot region target (nnU-Net's
``ConvertSegmentationToRegionsTransform``, written here with ``np.isin``), in value and gradient, on every
backend; MONAI's losses on that target where MONAI has them; bad input is refused with a clear error."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastloss
from fastloss._validation import check_regions, region_table

BRATS = [[1, 2, 3], [2, 3], [3]]  # whole tumour, tumour core, enhancing: nested
OVERLAP = [[1, 2], [2, 4], [0, 4], [5]]  # overlapping, one region with the background label, one absent label
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def region_onehot(labels: torch.Tensor, regions, dtype=torch.float64) -> torch.Tensor:
    """nnU-Net's region conversion, independently: channel r is ``isin(label, regions[r])``."""
    lab = labels[:, 0].numpy() if labels.ndim > 1 and labels.shape[1] == 1 else labels.numpy()
    out = np.stack([np.isin(lab, np.asarray(r)) for r in regions], axis=1)
    return torch.from_numpy(out).to(dtype)


def _data(regions, spatial, seed, dtype=torch.float64, max_label=None):
    gen = torch.Generator().manual_seed(seed)
    R = len(regions)
    top = max(max(r) for r in regions) + 2 if max_label is None else max_label
    x = torch.randn((2, R) + spatial, generator=gen, dtype=dtype) * 2
    y = torch.randint(0, top, (2, 1) + spatial, generator=gen)
    return x, y


# (name, constructor kwargs) of every loss that takes regions=
LOSSES = [
    ("DiceLoss", dict(sigmoid=True)),
    ("DiceLoss", dict(sigmoid=True, batch=True, squared_pred=True)),
    ("IoULoss", dict(sigmoid=True)),
    ("TverskyLoss", dict(sigmoid=True, alpha=0.3, beta=0.7)),
    ("FocalTverskyLoss", dict(sigmoid=True)),
    ("AsymmetricSimilarityLoss", dict(sigmoid=True)),
    ("GeneralizedDiceLoss", dict(sigmoid=True)),
    ("PenaltyGeneralizedDiceLoss", dict(sigmoid=True)),
    ("SensitivitySpecificityLoss", dict(sigmoid=True)),
    ("FocalLoss", dict()),
    ("FocalLoss", dict(alpha=0.25, reduction="sum")),
    ("CrossEntropyLoss", dict(sigmoid=True)),
    ("DiceFocalLoss", dict(sigmoid=True)),
]


def _value_and_grad(loss, x, y):
    x = x.detach().clone().requires_grad_(True)
    v = loss(x, y)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


@pytest.mark.parametrize("regions", [BRATS, OVERLAP], ids=["nested", "overlapping"])
@pytest.mark.parametrize("spatial", [(9, 10), (5, 6, 7)], ids=["2d", "3d"])
@pytest.mark.parametrize("name, kw", LOSSES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LOSSES)])
def test_regions_equal_the_loss_on_the_onehot_region_target(name, kw, regions, spatial, torch_backend):
    x, y = _data(regions, spatial, seed=len(name) + len(spatial))
    cls = getattr(fastloss, name)
    got = _value_and_grad(cls(regions=regions, **kw), x, y)
    ref = _value_and_grad(cls(**kw), x, region_onehot(y, regions))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, kw", [("DiceLoss", dict(sigmoid=True)), ("TverskyLoss", dict(sigmoid=True)),
                                      ("GeneralizedDiceLoss", dict(sigmoid=True)), ("FocalLoss", dict()),
                                      ("DiceFocalLoss", dict(sigmoid=True))])
def test_regions_equal_monai_on_the_onehot_region_target(name, kw, torch_backend):
    monai_losses = pytest.importorskip("monai.losses")
    x, y = _data(BRATS, (6, 7, 5), seed=3)
    got = _value_and_grad(getattr(fastloss, name)(regions=BRATS, **kw), x, y)
    ref = _value_and_grad(getattr(monai_losses, name)(**kw), x, region_onehot(y, BRATS))
    # MONAI's focal term computes in float32 whatever the input dtype: float32 agreement there
    tol = dict(rtol=1e-5, atol=1e-7) if "Focal" in name else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[0], ref[0].to(got[0].dtype), **tol)
    torch.testing.assert_close(got[1], ref[1].to(got[1].dtype), **tol)


def test_dice_ce_with_regions_is_dice_plus_bce_as_nnunet(torch_backend):
    """nnU-Net's DC_and_BCE_loss: sigmoid Dice + BCE with logits (mean over every element) on the region target."""
    x, y = _data(BRATS, (6, 5, 7), seed=4)
    got = _value_and_grad(fastloss.DiceCELoss(sigmoid=True, regions=BRATS, lambda_dice=0.7, lambda_ce=1.3), x, y)
    onehot = region_onehot(y, BRATS)

    def ref(a, _labels):
        return 0.7 * fastloss.DiceLoss(sigmoid=True)(a, onehot) + 1.3 * F.binary_cross_entropy_with_logits(a, onehot)

    want = _value_and_grad(ref, x, y)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, kw", [("DiceLoss", dict(sigmoid=True)), ("GeneralizedDiceLoss", dict(sigmoid=True)),
                                      ("FocalLoss", dict(reduction="sum")), ("CrossEntropyLoss", dict(sigmoid=True)),
                                      ("TverskyLoss", dict(sigmoid=True))])
def test_ignore_label_equals_dropping_its_voxels(name, kw, torch_backend):
    """An ignored voxel leaves every sum, as if it were not in the volume (per batch item: one item)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 6, 7, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (1, 1, 6, 7, 8), generator=gen)
    y[0, 0, ::2, 1::3] = 255
    keep = (y[0, 0] != 255).reshape(-1)
    cls = getattr(fastloss, name)
    got, g = _value_and_grad(cls(regions=BRATS, ignore_index=255, **kw), x, y)
    x_kept = x.reshape(1, 3, -1)[:, :, keep]  # a 1D volume of the counted voxels
    ref, g_kept = _value_and_grad(cls(**kw), x_kept, region_onehot(y.reshape(1, 1, -1)[:, :, keep], BRATS))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.reshape(1, 3, -1)[:, :, keep], g_kept, rtol=1e-12, atol=1e-12)
    assert g.reshape(1, 3, -1)[:, :, ~keep].abs().max() == 0


def test_labels_outside_every_region_and_absent_regions(torch_backend):
    x, _ = _data(OVERLAP, (4, 5, 6), seed=6)
    y = torch.full((2, 1, 4, 5, 6), 3)  # label 3 is in no region; label 5's region is absent
    y[:, :, :2] = 1000  # a label above every region's: in no region, still a counted voxel
    loss = fastloss.DiceLoss(sigmoid=True, regions=OVERLAP, reduction="none", smooth_nr=1.0, smooth_dr=1.0)
    v = loss(x, y)
    ref = fastloss.DiceLoss(sigmoid=True, reduction="none", smooth_nr=1.0, smooth_dr=1.0)(x, torch.zeros_like(x))
    torch.testing.assert_close(v, ref)
    assert torch.isfinite(v).all()


def test_gradcheck_regions(torch_backend):
    x, y = _data(BRATS, (3, 4, 3), seed=7)
    x = x.requires_grad_(True)
    for loss in (fastloss.DiceLoss(sigmoid=True, regions=BRATS, ignore_index=2),
                 fastloss.DiceCELoss(sigmoid=True, regions=BRATS),
                 fastloss.FocalLoss(regions=BRATS)):
        assert torch.autograd.gradcheck(lambda a: loss(a, y) * 2, (x,))


def _kernel_backends():
    # CPU tensors: the compiled kernels (auto) and, under the interpreter, the Triton kernels
    return ["auto", "triton"] if _INTERPRET else ["auto"]


@pytest.mark.parametrize("backend", _kernel_backends())
@pytest.mark.parametrize("name, kw", [("DiceLoss", dict(sigmoid=True)), ("DiceCELoss", dict(sigmoid=True)),
                                      ("DiceFocalLoss", dict(sigmoid=True)), ("GeneralizedDiceLoss", dict(sigmoid=True)),
                                      ("FocalLoss", dict()), ("TverskyLoss", dict(sigmoid=True))])
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_kernels_read_the_region_table(backend, name, kw, ignore_index, monkeypatch):
    """float32 logits on the kernel backends: the statistics kernels read the labels and the table (their
    ``supports`` says yes) and give the torch backend's value and gradient."""
    if backend == "triton":
        pytest.importorskip("triton")
    from fastloss.ops import stats as S

    x, y = _data(BRATS, (6, 7, 9), seed=8, dtype=torch.float32)
    if ignore_index is not None:
        y[:, :, 1::3] = ignore_index
    loss = getattr(fastloss, name)(regions=BRATS, ignore_index=ignore_index, **kw)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref = _value_and_grad(loss, x, y)
    served = []
    real = S.class_stats_torch
    monkeypatch.setattr(S, "class_stats_torch", lambda *a, **k: served.append("torch") or real(*a, **k))
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    got = _value_and_grad(loss, x, y)
    if backend == "triton" or _cpu_reads_regions():
        assert served == [], "the torch backend served a region target on a kernel backend"
    torch.testing.assert_close(got[0], ref[0], rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=2e-4, atol=2e-6)


def _cpu_reads_regions() -> bool:
    from fastloss.ops import cpu_stats

    return cpu_stats.available() and getattr(cpu_stats, "READS_REGIONS", False)


def test_region_table_bits():
    t = region_table(check_regions([[1, 2, 3], [2, 3], 3]), "cpu")
    assert t.tolist() == [0, 0b001, 0b011, 0b111]
    t2 = region_table(check_regions([[4], [0, 4]]), "cpu")
    assert t2.tolist() == [0b10, 0, 0, 0, 0b11]


@pytest.mark.parametrize(
    "make, target, error, match",
    [
        (lambda: fastloss.DiceLoss(softmax=True, regions=BRATS), None, ValueError, "needs sigmoid"),
        (lambda: fastloss.DiceLoss(regions=BRATS), None, ValueError, "needs sigmoid"),
        (lambda: fastloss.FocalLoss(use_softmax=True, regions=BRATS), None, ValueError, "needs sigmoid"),
        (lambda: fastloss.CrossEntropyLoss(regions=BRATS), None, ValueError, "needs sigmoid"),
        (lambda: fastloss.DiceLoss(sigmoid=True, include_background=False, regions=BRATS), None, ValueError,
         "first region"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=[[1], []]), None, ValueError, r"regions\[1\] is empty"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=[]), None, ValueError, "at least one region"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions="1,2"), None, TypeError, "sequence of label sets"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=[[1.5]]), None, TypeError, "integer labels"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=[[-1]]), None, ValueError, "must lie in"),
        (lambda: fastloss.DiceCELoss(sigmoid=True, regions=BRATS, label_smoothing=0.1), None, ValueError,
         "label_smoothing"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=BRATS[:2]), "labels", ValueError, "one channel per region"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=BRATS), "float", TypeError, "needs integer labels"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=BRATS), "onehot", ValueError, "must be integer labels"),
        (lambda: fastloss.DiceLoss(sigmoid=True, regions=BRATS), "negative", ValueError, ">= 0 with regions"),
    ],
)
def test_bad_regions_are_refused(make, target, error, match):
    x = torch.randn(2, 3, 4, 5, 6)
    y = torch.randint(0, 4, (2, 1, 4, 5, 6))
    with pytest.raises(error, match=match):
        loss = make()
        if target is None:
            return
        if target == "float":
            y = y.float()
        elif target == "onehot":
            y = region_onehot(y, BRATS, torch.float32).long()
        elif target == "negative":
            y[0, 0, 0, 0, 0] = -3
        loss(x, y)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_regions_narrow_strided_labels_and_labels_outside_the_table(label_dtype, dtype, monkeypatch):
    """The compiled CPU kernels on region targets: labels of any integer dtype, read through a stride, labels
    above every region (in no region) and, with the label check off, negative labels (ignored voxels, as the
    torch backend treats them): the torch backend's value and gradient."""
    if not _cpu_reads_regions():
        pytest.skip("the compiled CPU kernels do not read region tables in this build")
    from fastloss.ops import stats as S

    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 5, 6, 7, generator=gen, dtype=dtype)
    wide = torch.randint(0, 9, (2, 1, 5, 6, 14), generator=gen)  # labels 6..8 lie above every region
    if label_dtype != torch.uint8:
        wide[:, :, 0, 0, ::3] = -2  # negative: refused with the check on, ignored voxels with it off
        monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    y = wide.to(label_dtype)[..., ::2]  # a strided view of the labels
    assert not y.is_contiguous()
    loss = fastloss.DiceFocalLoss(sigmoid=True, regions=OVERLAP, batch=True, lambda_focal=0.5)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref = _value_and_grad(loss, x, y)
    served = []
    real = S.class_stats_torch
    monkeypatch.setattr(S, "class_stats_torch", lambda *a, **k: served.append("torch") or real(*a, **k))
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    got = _value_and_grad(loss, x, y)
    assert served == []
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(got[0], ref[0], **tol)
    torch.testing.assert_close(got[1], ref[1], **tol)


def test_compiled_region_op_passes_opcheck():
    """The compiled statistics op with a label-to-regions table (torch.library.opcheck: schema, fake kernel,
    autograd registration)."""
    if not _cpu_reads_regions():
        pytest.skip("the compiled CPU kernels do not read region tables in this build")
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 120, generator=gen, requires_grad=True)
    lab = torch.randint(0, 5, (2, 120), generator=gen)
    lab[:, ::7] = 255
    table = torch.tensor([0, 1, 3, 0, 4])  # {1, 2}, {2}, {4}
    args = (x, lab, None, None, None, table, "sigmoid", "pg,p,g,ce,focal,count", 2.0, 0.25, 0.3, 0.0, 255)
    torch.library.opcheck(torch.ops.fastloss.cpu_class_stats.default, args)


@pytest.mark.cuda
@pytest.mark.parametrize("name, kw", [("DiceCELoss", dict(sigmoid=True)), ("DiceFocalLoss", dict(sigmoid=True)),
                                      ("GeneralizedDiceLoss", dict(sigmoid=True))])
def test_triton_regions_on_cuda_equal_the_float64_torch_backend(name, kw, monkeypatch):
    """CUDA tensors: the Triton statistics kernels read the region table (GPU machine: benchmarks/gpu_session.sh)."""
    pytest.importorskip("triton")
    x, y = _data(BRATS, (24, 20, 28), seed=11, dtype=torch.float32)
    y[:, :, ::4] = 255
    loss = getattr(fastloss, name)(regions=BRATS, ignore_index=255, **kw)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref = _value_and_grad(loss, x.double(), y)
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    got = _value_and_grad(loss.cuda(), x.cuda(), y.cuda())
    torch.testing.assert_close(got[0].double().cpu(), ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1].double().cpu(), ref[1], rtol=1e-4, atol=1e-6)
