"""The loss's share of an nnU-Net v2 training step: nnU-Net's ``DC_and_topk_loss`` against fastloss's DiceTopK.

The network is the one nnU-Net plans for the end-to-end test's tiny dataset (tests/test_nnunet_e2e.py: 32^3
cases, 3 classes): a 4-stage ``PlainConvUNet`` with deep supervision, patch 32^3, batch 2, batch_dice False
(what the planner chose). Both losses are wrapped as nnU-Net's trainer wraps them (deep supervision weights
1/2^i, lowest resolution 0, normalised); the targets are downsampled once, outside the timings, as nnU-Net's
data loader does.

Rows (``nnunet.csv``), per provider (``nnunet``: ``DeepSupervisionWrapper(DC_and_topk_loss)``; ``fastloss``:
``fastloss.nnunet.build_nnunet_loss("DiceTopK")``):

- ``step``: one training step (zero_grad, forward, loss, backward, SGD step as nnU-Net's optimiser);
- ``loss``: the loss alone, forward and backward to the network's outputs (detached copies);
- ``share`` in the ``loss`` row: loss median / step median of the same provider.

The two providers alternate call by call (steps, then loss-only calls), so load changes hit both alike.

``python benchmarks/bench_nnunet.py [--patch 32,32,32] [--batch 2] [--reps 10] [--threads N] [--record]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ARCH = {  # nnU-Net's plan for the tiny dataset's 3d_fullres (32^3 patch)
    "n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}
NUM_CLASSES = 3


def ds_weights(n: int) -> list:
    w = np.array([1 / 2**i for i in range(n)])
    w[-1] = 0
    return list(w / w.sum())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", default="32,32,32")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    common.add_record_argument(p)
    args = p.parse_args(argv)
    if args.record:
        common.set_record(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    patch = tuple(int(s) for s in args.patch.split(","))

    from nnunetv2.training.loss.compound_losses import DC_and_topk_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from fastloss.losses.deep_supervision import downsample_target
    from fastloss.nnunet import build_nnunet_loss

    torch.manual_seed(0)
    net = get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", ARCH,
                                 ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, NUM_CLASSES,
                                 allow_init=True, deep_supervision=True)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn((args.batch, 1) + patch)
    full = torch.randint(0, NUM_CLASSES, (args.batch, 1) + patch).float()
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    targets = [downsample_target(full, s) for s in shapes]
    w = ds_weights(len(shapes))
    providers = {
        "nnunet": DeepSupervisionWrapper(
            DC_and_topk_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {"k": 10}), w),
        "fastloss": build_nnunet_loss("DiceTopK", batch_dice=False, deep_supervision_weights=w),
    }
    with torch.no_grad():
        fixed = [o.detach() for o in net(x)]

    def step_fn(loss):
        def step():
            opt.zero_grad(set_to_none=True)
            loss(net(x), targets).backward()
            opt.step()
        return step

    def loss_fn(loss):
        def loss_only():
            loss([o.clone().requires_grad_(True) for o in fixed], targets).backward()
        return loss_only

    # The providers alternate call by call, so a change in the machine's load hits both alike (the shared
    # 2-core machine this was written on is rarely idle).
    samples = {(n, w): [] for n in providers for w in ("step", "loss")}
    for what, make, reps in (("step", step_fn, args.reps), ("loss", loss_fn, max(3 * args.reps, 30))):
        fns = {n: make(l) for n, l in providers.items()}
        for fn in fns.values():  # warm-up
            fn()
            fn()
        for _ in range(reps):
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                samples[(n, what)].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for name in providers:
        base = {"provider": name, "loss": "DiceTopK", "patch": "x".join(map(str, patch)), "batch": args.batch,
                "classes": NUM_CLASSES, "threads": torch.get_num_threads(), "outputs": len(shapes)}
        t_step = common.summarize(samples[(name, "step")])
        t_loss = common.summarize(samples[(name, "loss")])
        share = t_loss["median_ms"] / t_step["median_ms"]
        rows.append(common.stamp({**base, "what": "step", **t_step}, "cpu"))
        rows.append(common.stamp({**base, "what": "loss", **t_loss, "share": round(share, 4)}, "cpu"))
        print(f"{name:9s} step {t_step['median_ms']:8.1f} ms  loss fwd+bwd {t_loss['median_ms']:7.2f} ms "
              f"(p20 {t_loss['p20_ms']:.2f}, p80 {t_loss['p80_ms']:.2f})  share {100 * share:5.2f} %")
    path = common.append_csv("nnunet.csv", rows)
    print(f"rows -> {path} (run {common.RUN_ID})")


if __name__ == "__main__":
    main()
