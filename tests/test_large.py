"""Tensors of more than 2^31 elements (issue 24): the loss statistics, the EDT, the TopK select and the
metrics on inputs whose element offsets pass 2^31, against analytic answers, within 16 GiB of memory.

Marked ``large`` and skipped unless asked: ``pytest -m large tests/test_large.py`` or
``pytest --run-large`` (tests/conftest.py). Each part runs in an interpreter of its own, which reports its
peak memory (VmHWM): the test fails above 16 GiB and prints the peak (``-s`` shows it). On this project's
machines (2 cores) the four parts take a few minutes together. Where the answer depends on values beyond
element 2^31 (labels, logits, the one zero voxel, the largest values, a cube in the far corner), a kernel
that indexed with 32-bit offsets would read the wrong elements and fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.large

LIMIT = 16 << 30

_PRELUDE = """
import math, os, sys
import numpy as np
import torch
torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
import fastloss

def peak():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
"""


def _run(name: str, body: str, timeout: float = 1800) -> None:
    env = dict(os.environ)
    env.setdefault("FASTLOSS_CPU_CACHE_MB", "0")
    r = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(body) + '\nprint("PEAK", peak())\n'],
                       capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{name}: return code {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    peak = int([ln for ln in r.stdout.splitlines() if ln.startswith("PEAK ")][-1].split()[1])
    print(f"\n{name}: peak memory {peak / 2**30:.2f} GiB")
    assert peak <= LIMIT, f"{name}: peak memory {peak / 2**30:.2f} GiB is over 16 GiB"


N = (1 << 31) + (1 << 20)  # voxels of the statistics and values of the TopK: offsets beyond 2^31


def test_statistics_over_2_31_voxels():
    _run("statistics", f"""
        from fastloss._validation import prepare_target
        from fastloss.ops import cpu_stats
        from fastloss.ops.stats import StatsSpec
        N, H = {N}, 1 << 31
        x = torch.zeros(1, 1, N)           # 8 GiB: logit 0 up to 2^31, then 30 (p = σ(30) = 1 in float32)
        x[..., H:] = 30.0
        lab = torch.zeros(1, 1, N, dtype=torch.uint8)  # 2 GiB: foreground (label 1) only past 2^31
        lab[..., H:] = 1
        tgt = prepare_target(x, lab)
        s = cpu_stats.class_stats_cpu(x, tgt, StatsSpec("sigmoid", ("pg", "p", "g", "count")))
        assert s.shape == (1, 1, 4)
        assert s[0, 0].tolist() == [2.0**20, 2.0**30 + 2.0**20, 2.0**20, float(N)], s
        # softmax over two classes of one logit row (stride 0 between classes): p = 1/2 everywhere
        del x, tgt
        x2 = torch.zeros(1, 1, N).expand(1, 2, N)
        s2 = cpu_stats.class_stats_cpu(x2, prepare_target(x2, lab), StatsSpec("softmax", ("pg", "p", "g", "ce")))
        assert s2[0, :, :3].tolist() == [[2.0**30, N / 2, float(H)], [2.0**19, N / 2, 2.0**20]], s2
        ce = s2[0, :, 3].double()
        want = torch.tensor([H, 1 << 20], dtype=torch.float64) * math.log(2.0)
        assert torch.allclose(ce, want, rtol=1e-6, atol=0), (ce, want)
    """)


def test_edt_of_a_1291_cube():
    # 1291^3 = 2,151,685,171 voxels: a bool mask (2 GiB) whose one zero voxel is the last one, and float32
    # distances (8 GiB): exact, sqrt of an integer rounded once, compared slab by slab
    _run("edt", """
        from fastloss.distance import edt
        n = 1291
        mask = torch.ones(n, n, n, dtype=torch.bool)
        mask[-1, -1, -1] = False
        d = edt(mask)
        assert d.shape == (n, n, n) and d.dtype == torch.float32
        yx = ((n - 1 - torch.arange(n, dtype=torch.float64)) ** 2)
        plane = yx.view(n, 1) + yx.view(1, n)
        for z in range(n):
            want = (plane + float((n - 1 - z) ** 2)).sqrt().float()
            assert torch.equal(d[z], want), z
    """)


def test_topk_select_over_2_31_values():
    _run("topk", f"""
        from fastloss.ops.cpu_stats import topk_select_cpu
        N = {N}
        v = torch.ones(N)  # 8 GiB; the five largest are the last five
        v[-5:] = torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0])
        s, thr, cg, ce = topk_select_cpu(v, 3)  # a small top bucket: gathered
        assert (s.item(), thr.item(), cg.item(), ce.item()) == (15.0, 4.0, 2, 1)
        k = N // 2
        s, thr, cg, ce = topk_select_cpu(v, k)  # the threshold's bucket holds nearly every value
        want = np.float32(20 + (k - 5))
        assert (s.item(), thr.item(), cg.item(), ce.item()) == (float(want), 1.0, 5, N - 5), (s, thr, cg, ce)
    """)


def test_metrics_of_a_1291_cube():
    # two 200^3 cubes in the far corner of 1291^3 masks (2 GiB each), one shifted by 3 along the first axis
    _run("metrics", """
        from fastloss.metrics import dice, hausdorff_distance
        n = 1291
        p = torch.zeros(1, 1, n, n, n, dtype=torch.bool)
        g = torch.zeros(1, 1, n, n, n, dtype=torch.bool)
        p[..., 1000:1200, 1000:1200, 1000:1200] = True
        g[..., 1003:1203, 1000:1200, 1000:1200] = True
        dsc = dice(p, g)
        assert abs(dsc.item() - 197 / 200) < 1e-6, dsc
        hd = hausdorff_distance(p, g, percentile=None, include_background=True)
        assert hd.item() == 3.0, hd
    """)
