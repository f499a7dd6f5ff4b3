"""Every loss a user can name runs on CPU tensors through the compiled kernels, with or without triton.

For every ``fastloss.PAPER_LOSSES`` entry and every named loss beyond the paper (built by ``get_loss``), and every
MONAI drop-in class (built with MONAI's usual arguments), one forward and backward on small CPU tensors must

- give a finite loss and a finite gradient,
- call the compiled extension ``fastloss._C`` (a statistics, CE, TopK, Lovász or EDT kernel: not a silent
  fallback to torch ops),
- and never import triton.

Run as ``python tools/check_cpu_path.py`` in a venv without triton (CI's main-job venv), or with
``--block-triton`` in any venv (``sys.modules["triton"] = None`` before fastloss is imported; what the
normal test suite does in a subprocess). Exits 1 and lists the failures when a loss fails a check.
"""

from __future__ import annotations

import argparse
import sys

# the extension's entry points that carry the losses' work (a call to any of them means compiled code ran)
KERNELS = (
    "class_stats_cpu_forward", "class_stats_cpu_backward", "voxel_ce_cpu_forward", "voxel_ce_cpu_backward",
    "topk_select_cpu", "topk_weights_cpu", "lovasz_cpu", "loss_formula_cpu", "edt_cpu",
    "soft_skeleton_cpu", "soft_confusion_cpu", "soft_confusion_rows_cpu", "soft_confusion_rows_scale_cpu",
    "nacl_penalty_cpu", "nacl_loss_cpu", "skeletonize_cpu",
)

# MONAI's drop-in names, with the arguments MONAI users pass for integer labels and multi-class logits
MONAI_DROP_INS = {
    "DiceLoss": dict(to_onehot_y=True, softmax=True),
    "DiceCELoss": dict(to_onehot_y=True, softmax=True),
    "DiceFocalLoss": dict(to_onehot_y=True, softmax=True),
    "GeneralizedDiceLoss": dict(to_onehot_y=True, softmax=True),
    "GeneralizedDiceFocalLoss": dict(to_onehot_y=True, softmax=True),
    "MaskedDiceLoss": dict(to_onehot_y=True, softmax=True),
    "TverskyLoss": dict(to_onehot_y=True, softmax=True),
    "FocalLoss": dict(to_onehot_y=True, use_softmax=True),
    "HausdorffDTLoss": dict(to_onehot_y=True, softmax=True),
    "LogHausdorffDTLoss": dict(to_onehot_y=True, softmax=True),
    "BoundaryLoss": dict(to_onehot_y=True, softmax=True),
    "SoftclDiceLoss": dict(to_onehot_y=True, softmax=True),
    "SoftDiceclDiceLoss": dict(to_onehot_y=True, softmax=True),
    "MCCLoss": dict(to_onehot_y=True, softmax=True),
    "GeneralizedWassersteinDiceLoss": dict(),
    "AsymmetricUnifiedFocalLoss": dict(to_onehot_y=True, num_classes=3, rare_classes=[1]),
    "NACLLoss": dict(classes=3, dim=3),
}


class _CountingExtension:
    """Stands in for ``fastloss._C``: every call of a function of the real module is counted by name."""

    def __init__(self, real):
        self._real = real
        self.calls = []

    def __getattr__(self, name):
        value = getattr(self._real, name)
        if not callable(value):
            return value

        def counted(*args, **kwargs):
            self.calls.append(name)
            return value(*args, **kwargs)

        return counted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-triton", action="store_true", help="make `import triton` fail first")
    args = parser.parse_args(argv)
    if args.block_triton:
        sys.modules["triton"] = None  # import triton now raises ImportError

    import warnings

    import torch

    from fastloss import _ext

    if _ext.C is None:
        print(f"FAIL: fastloss._C does not import ({_ext.IMPORT_ERROR})")
        return 1
    counter = _CountingExtension(_ext.C)
    _ext.C = counter  # before the ops import it: they take the module from fastloss._ext

    import fastloss

    torch.manual_seed(0)
    B, C, S = 2, 3, (6, 7, 8)
    from fastloss.registry import BEYOND_PAPER

    cases = [(f"get_loss({n!r})", lambda n=n: fastloss.get_loss(n)) for n in sorted(fastloss.PAPER_LOSSES)]
    # the named losses beyond the paper (skeleton/topology and MONAI's others), with their get_loss configuration
    # ("UnifiedFocal" is MONAI's binary form: the 3-class inputs here take its multi-class argument)
    beyond = {"UnifiedFocal": dict(num_classes=3, rare_classes=[1])}
    cases += [(f"get_loss({n!r})", lambda n=n: fastloss.get_loss(n, **beyond.get(n, {}))) for n in sorted(BEYOND_PAPER)]
    cases += [(f"{n}(**{kw})", lambda n=n, kw=kw: getattr(fastloss, n)(**kw)) for n, kw in MONAI_DROP_INS.items()]
    failures = []
    for label, make in cases:
        x = torch.randn(B, C, *S, requires_grad=True)
        y = torch.randint(0, C, (B, 1, *S))
        counter.calls.clear()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI's own warnings; a fallback is caught by the count
                loss = make()
                value = loss(x, y)
                value.backward()
        except Exception as exc:  # noqa: BLE001 - reported, then the next loss
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        kernels = sorted({c for c in counter.calls if c in KERNELS})
        problems = []
        if not torch.isfinite(value).all():
            problems.append(f"loss {value.item()}")
        if x.grad is None or not torch.isfinite(x.grad).all():
            problems.append("no finite gradient")
        if not kernels:
            problems.append("no compiled kernel ran (a torch fallback)")
        status = "ok" if not problems else "FAIL: " + "; ".join(problems)
        print(f"{label:<60} {status:<8} kernels: {', '.join(kernels) or '-'}")
        if problems:
            failures.append(f"{label}: {'; '.join(problems)}")
    imported = [m for m, mod in sys.modules.items() if (m == "triton" or m.startswith("triton.")) and mod is not None]
    if imported:
        failures.append(f"triton was imported on the CPU path: {sorted(imported)[:5]}")
    print(f"{len(cases)} losses, {len(failures)} failures; triton imported: {'yes' if imported else 'no'}")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
