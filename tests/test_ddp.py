"""DDP-exact batch statistics: two gloo processes on the CPU, float64.

After one DDP step of a small conv net, each loss with ``batch=True`` (Dice, DiceCE, DiceTopK, GDice, MONAI's MCCLoss:
its tp/fp/fn/tn come from all-reduced Σpg, Σp, Σg and the voxel count) and TopK
(with an ignore label that leaves the ranks different numbers of counted voxels) synchronised by
:func:`fastloss.distributed.sync_batch_statistics` must give the parameter gradients of one process on the
concatenated batch, and the loss value of that process (Dice, GDice: on every rank; DiceCE, DiceTopK, TopK: the
mean over the ranks, since CE and TopK are per-rank terms; MCC, SkeletonRecall: on every rank; DiceCESkeletonRecall:
the mean over the ranks). The reference is computed in the same worker from the
same initial weights, without DDP.
"""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastloss
from fastloss.distributed import sync_batch_statistics, synced_modules

WORLD = 2
LOSSES = ["Dice", "DiceCE", "DiceTopK", "GDice", "TopK", "MCC", "SkeletonRecall", "DiceCESkeletonRecall"]


def _loss(name, **kw):
    """A fresh loss: the paper's names through get_loss; MCC is MONAI's MCCLoss with batch statistics (issue 21)."""
    if name == "MCC":
        return fastloss.MCCLoss(softmax=True, batch=True)
    if name == "SkeletonRecall":  # issue 22: the recall sums of the (per-sample) tubed skeleton, batch=True
        return fastloss.SkeletonRecallLoss(batch=True)
    if name == "DiceCESkeletonRecall":  # the one-pass compound: Dice and recall all-reduced, CE per rank
        return fastloss.DiceCESkeletonRecallLoss(batch=True)
    return fastloss.get_loss(name, **kw)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 3, padding=1)
    ).double()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 10, 9, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 1, 10, 9), generator=g)
    y[1] = 0  # classes absent from one rank's shard: the global sums differ from each rank's
    return x, y


def _worker(rank, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        x, y = _data()
        y_ign = y.clone()
        y_ign[0, :, :6] = 3  # 60 ignored voxels on rank 0, none on rank 1
        shard = slice(rank * 2, rank * 2 + 2)
        for name in LOSSES:
            # reference: one process, whole batch (and for TopK the per-shard terms, the documented semantics)
            net = _net()
            kw = {"ignore_index": 3} if name == "TopK" else {}  # TopK: unequal counted voxels per rank
            ref = _loss(name, **kw)(net(x), y_ign if kw else y)
            ref.backward()
            ref_grads = [p.grad.clone() for p in net.parameters()]

            model = torch.nn.parallel.DistributedDataParallel(_net())
            loss = sync_batch_statistics(_loss(name, **kw))
            assert synced_modules(loss), name
            out = loss(model(x[shard]), (y_ign if kw else y)[shard])
            out.backward()
            mean_out = out.detach().clone()
            dist.all_reduce(mean_out)
            mean_out /= WORLD
            if name in ("Dice", "GDice", "MCC", "SkeletonRecall"):  # the formula of all-reduced sums: the same value on every rank
                torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mean_out, ref.detach(), rtol=1e-12, atol=1e-12)
            for p, r in zip(model.parameters(), ref_grads):
                torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-12)

            # without the synchronisation the per-rank values are not the global ones: the test can fail
            if name in ("Dice", "TopK", "MCC", "SkeletonRecall"):
                plain = _loss(name, **kw)(_net()(x[shard]), (y_ign if kw else y)[shard]).detach()
                gathered = [torch.zeros_like(plain) for _ in range(WORLD)]
                dist.all_gather(gathered, plain)
                assert any(abs(float(v - ref)) > 1e-6 for v in gathered)
        results[rank] = "ok"
    except BaseException as e:  # report to the parent; an assertion in a worker alone would only exit it
        results[rank] = f"{type(e).__name__}: {e}"
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_ddp_step_equals_single_process(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True,
                           start_method="spawn")
        assert dict(results) == {0: "ok", 1: "ok"}, dict(results)


def test_sync_refuses_what_it_cannot_reduce():
    with pytest.raises(ValueError, match="nothing to all-reduce"):
        sync_batch_statistics(fastloss.get_loss("CE"))
    with pytest.raises(ValueError, match="TopKLoss are not all-reduced"):
        sync_batch_statistics(fastloss.get_loss("TopK-Threshold (0.5)"))
    with pytest.raises(ValueError, match="SensitivitySpecificityLoss are not all-reduced"):
        sync_batch_statistics(fastloss.get_loss("SS"))
    with pytest.raises(TypeError, match="expects an nn.Module"):
        sync_batch_statistics(lambda a, b: a)
    loss = sync_batch_statistics(fastloss.get_loss("DiceCE"))
    assert [type(m).__name__ for m in synced_modules(loss)] == ["DiceLoss"]
    assert [type(m).__name__ for m in synced_modules(sync_batch_statistics(fastloss.get_loss("DiceTopK")))] == [
        "DiceLoss", "TopKLoss"]
    sync_batch_statistics(loss, enabled=False)
    assert synced_modules(loss) == []


def test_sync_without_init_process_group_says_so():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    loss = sync_batch_statistics(fastloss.get_loss("Dice"))
    with pytest.raises(RuntimeError, match="init_process_group"):
        loss(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 1, 4, 4)))
