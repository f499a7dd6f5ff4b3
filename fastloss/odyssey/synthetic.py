"""Synthetic 3D tasks modelled on the paper's four (Ma et al. 2021, Table 1), generated deterministically.

Every case is a CT-like volume: air outside an ellipsoidal body, soft tissue inside it with a few
unlabelled distractor blobs, and the task's organs. Each structure is the set of the ``k`` voxels with
the smallest value of a smooth "shape field" (the distance to a centre or to a curve, scaled per axis
and warped by a low-frequency displacement), taken among the voxels still free. Choosing ``k`` sets
the structure's volume exactly, so the foreground fractions follow Table 1's BG:FG ratios (times a
per-case factor in ``[exp(-0.25), exp(0.25)]`` = [0.78, 1.28]), and every class is present in every
case (at least ``MIN_VOXELS`` voxels). The warp, the centres, the intensities and the noise differ
from case to case.

The image is the piecewise-constant label map of every structure's mean intensity, blurred by one
3x3x3 box filter (partial volume), plus a smooth bias field and Gaussian noise. Targets and
distractors overlap in intensity (distractors draw from the same range), so a voxel's value alone
does not decide its class: the network must use shape and context, and losses can differ.

Tasks (fractions of the whole volume; the paper's BG:FG ratio in brackets):

======================  ==============================================  ==========================
task                    labelled classes                                target fractions
======================  ==============================================  ==========================
``liver``               1 liver (large organ)                           1/43 (42:1)
``liver_tumor``         1 tumour, inside an unlabelled liver            1/577 (576:1)
``pancreas``            1 pancreas (thin curved tube)                   1/504 (503:1)
``multi_organ``         1 liver, 2 kidney, 3 pancreas, 4 gallbladder    1/31, 1/150, 1/504, 1/1244
                                                                        (30:1 to 1243:1)
======================  ==============================================  ==========================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["TASKS", "TaskSpec", "Structure", "make_case", "make_cases", "MIN_VOXELS", "FRACTION_JITTER"]

#: Every labelled structure has at least this many voxels (so a class is never absent).
MIN_VOXELS = 8
#: The per-case volume factor is ``exp(u)``, ``u`` uniform in ``[-FRACTION_JITTER, FRACTION_JITTER]``.
FRACTION_JITTER = 0.25


@dataclass(frozen=True)
class Structure:
    """One structure of a synthetic case.

    Attributes:
        name: what it imitates.
        fraction: its volume as a fraction of the whole volume (before the per-case jitter).
        intensity: mean intensity (soft tissue is 0, air is -2).
        label: its class in the label map (0: not labelled, it is part of the background).
        axes: semi-axes of its shape field in the normalised [-1, 1] frame (z, y, x): the shape's
            proportions (the volume is set by ``fraction``).
        centre: the nominal centre (z, y, x) in the normalised frame; jittered per case.
        tube: a thin curved tube (distance to a bent segment) instead of a blob.
        inside: the name of a structure it lies inside (a tumour inside the liver), or None.
    """

    name: str
    fraction: float
    intensity: float
    label: int = 0
    axes: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    centre: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    tube: bool = False
    inside: Optional[str] = None


@dataclass(frozen=True)
class TaskSpec:
    """A synthetic task: its structures (placed in order) and its class names (index = label)."""

    name: str
    structures: Tuple[Structure, ...]
    class_names: Tuple[str, ...]
    noise: float = 0.45
    distractors: int = 4

    @property
    def num_classes(self) -> int:
        """Classes including the background."""
        return len(self.class_names)

    def target_fractions(self) -> Dict[int, float]:
        """``{label: nominal foreground fraction}`` of every labelled class."""
        return {s.label: s.fraction for s in self.structures if s.label > 0}


def _liver(label: int, fraction: float = 1 / 43) -> Structure:
    return Structure("liver", fraction, 1.0, label, axes=(0.9, 1.0, 1.1), centre=(0.0, -0.1, -0.3))


TASKS: Dict[str, TaskSpec] = {
    "liver": TaskSpec("liver", (_liver(1),), ("background", "liver")),
    "liver_tumor": TaskSpec(
        "liver_tumor",
        (_liver(0), Structure("tumour", 1 / 577, 0.45, 1, axes=(1.0, 0.9, 1.1), inside="liver")),
        ("background", "tumour"),
    ),
    "pancreas": TaskSpec(
        "pancreas",
        (Structure("pancreas", 1 / 504, 0.75, 1, axes=(1.0, 1.0, 1.0), centre=(0.05, 0.15, 0.1), tube=True),),
        ("background", "pancreas"),
    ),
    "multi_organ": TaskSpec(
        "multi_organ",
        (
            _liver(1, 1 / 31),
            Structure("kidney", 1 / 150, 0.8, 2, axes=(1.3, 0.8, 0.7), centre=(0.0, 0.35, 0.45)),
            Structure("pancreas", 1 / 504, 0.65, 3, centre=(0.05, 0.0, 0.15), tube=True),
            Structure("gallbladder", 1 / 1244, 0.3, 4, axes=(1.0, 0.8, 0.8), centre=(0.1, -0.3, 0.05)),
        ),
        ("background", "liver", "kidney", "pancreas", "gallbladder"),
    ),
}


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _grid(size: Sequence[int]) -> torch.Tensor:
    """Voxel centres in the normalised frame [-1, 1], shape (3, *size), float64."""
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1 for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _warp(x: torch.Tensor, gen: torch.Generator, amplitude: float, modes: int = 3) -> torch.Tensor:
    """A smooth random displacement of the points ``x`` (3, ...): a sum of ``modes`` plane waves per
    axis with wavelengths of about one body width, each of amplitude up to ``amplitude``."""
    out = x.clone()
    for axis in range(3):
        for _ in range(modes):
            k = torch.randn(3, generator=gen, dtype=torch.float64) * 2.0  # wave vector, |k| ~ 3.5
            phase = _uniform(gen, 0.0, 2 * math.pi)
            amp = _uniform(gen, -amplitude, amplitude)
            out[axis] += amp * torch.sin(torch.einsum("i,i...->...", k, x) + phase)
    return out


def _shape_field(x: torch.Tensor, s: Structure, centre: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The structure's shape field at the points ``x`` (3, ...): small inside, growing outward."""
    axes = torch.tensor(s.axes, dtype=torch.float64) * torch.exp(_uniform(gen, -0.15, 0.15, 3))
    y = _warp(x, gen, amplitude=0.06) - centre.view(3, *([1] * (x.dim() - 1)))
    if not s.tube:
        return torch.sqrt(sum((y[i] / axes[i]) ** 2 for i in range(3)))
    # A bent segment of length ~0.9 through the centre, mostly along x, sampled at 48 points; the field
    # is the distance to the nearest sample (scaled per axis), so its level sets are thin tubes.
    t = torch.linspace(-0.5, 0.5, 48, dtype=torch.float64)
    direction = torch.tensor([0.15, 0.25, 1.0], dtype=torch.float64) + 0.2 * torch.randn(3, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm()
    bend = torch.randn(3, generator=gen, dtype=torch.float64) * 0.35
    curve = 0.9 * t[:, None] * direction + (t[:, None] ** 2 - 1 / 12) * bend  # (48, 3)
    pts = (y / axes.view(3, *([1] * (x.dim() - 1)))).reshape(3, -1).T  # (N, 3)
    best = torch.full((pts.shape[0],), math.inf, dtype=torch.float64)
    for chunk in torch.split(torch.arange(pts.shape[0]), 1 << 16):
        best[chunk] = torch.cdist(pts[chunk], curve / axes).min(dim=1).values
    return best.reshape(x.shape[1:])


def _take(field_: torch.Tensor, free: torch.Tensor, k: int) -> torch.Tensor:
    """The mask of the ``k`` free voxels with the smallest field values."""
    values = torch.where(free, field_, torch.full_like(field_, math.inf)).flatten()
    k = min(k, int(free.sum()))
    idx = torch.topk(values, k, largest=False).indices
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[idx] = True
    return mask.view(field_.shape)


def _box_blur(v: torch.Tensor) -> torch.Tensor:
    """3x3x3 mean filter with edge replication (the partial-volume effect at borders)."""
    w = torch.full((1, 1, 3, 3, 3), 1 / 27, dtype=v.dtype)
    padded = torch.nn.functional.pad(v[None, None], (1, 1, 1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv3d(padded, w)[0, 0]


def make_case(task: str, size: Sequence[int], seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generate one case of a synthetic task.

    Args:
        task: a key of :data:`TASKS` (``"liver"``, ``"liver_tumor"``, ``"pancreas"``, ``"multi_organ"``).
        size: the volume's shape ``(D, H, W)``, each at least 8.
        seed: the case's seed; the same ``(task, size, seed)`` always gives the same case.

    Returns:
        ``(image, label)``: a float32 ``(1, D, H, W)`` image (z-scored) and an int64 ``(1, D, H, W)``
        label map with values ``0 .. num_classes - 1``.

    Raises:
        ValueError: an unknown task, or a size that is not three integers >= 8.

    Example:
        >>> img, lab = make_case("liver", (32, 32, 32), seed=0)
        >>> img.shape, int(lab.max())
        (torch.Size([1, 32, 32, 32]), 1)
    """
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {sorted(TASKS)}")
    size = tuple(size)
    if len(size) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 8 for n in size):
        raise ValueError(f"size must be three integers >= 8 (D, H, W), got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    spec = TASKS[task]
    gen = torch.Generator().manual_seed(seed)
    x = _grid(size)
    n_total = math.prod(size)

    # Body: an ellipsoid filling most of the volume; air (-2) outside.
    body_axes = torch.tensor([0.85, 0.9, 0.95], dtype=torch.float64) * torch.exp(_uniform(gen, -0.05, 0.05, 3))
    body = torch.sqrt(sum((_warp(x, gen, 0.03)[i] / body_axes[i]) ** 2 for i in range(3))) <= 1.0
    intensity = torch.where(body, 0.0, -2.0).to(torch.float64)
    label = torch.zeros(size, dtype=torch.int64)
    free = body.clone()
    placed: Dict[str, torch.Tensor] = {}

    for s in spec.structures:
        if s.inside is not None:
            host = placed[s.inside]
            # centre: a random voxel of the host; the structure takes host voxels only
            candidates = torch.nonzero(host.flatten()).flatten()
            pick = candidates[torch.randint(len(candidates), (1,), generator=gen)]
            centre = x.reshape(3, -1)[:, pick].flatten()
            allowed = host
        else:
            centre = torch.tensor(s.centre, dtype=torch.float64) + _uniform(gen, -0.08, 0.08, 3)
            allowed = free
        k = max(MIN_VOXELS, round(s.fraction * n_total * math.exp(float(_uniform(gen, -FRACTION_JITTER, FRACTION_JITTER)))))
        mask = _take(_shape_field(x, s, centre, gen), allowed, k)
        placed[s.name] = mask
        if s.inside is None:
            free &= ~mask
        jitter = float(torch.randn(1, generator=gen, dtype=torch.float64)) * 0.08
        intensity = torch.where(mask, s.intensity + jitter, intensity)
        if s.label > 0:
            label = torch.where(mask, s.label, label)

    # Unlabelled distractors: blobs with intensities drawn from the organs' range, in free tissue.
    for _ in range(spec.distractors):
        centre = _uniform(gen, -0.5, 0.5, 3)
        blob = Structure("distractor", float(_uniform(gen, 1 / 600, 1 / 80)), 0.0, axes=(1.0, 1.0, 1.0))
        mask = _take(_shape_field(x, blob, centre, gen), free, max(1, round(blob.fraction * n_total)))
        free &= ~mask
        intensity = torch.where(mask, float(_uniform(gen, 0.3, 1.0)), intensity)

    # Partial volume, a smooth bias field (+-0.15) and noise; then z-score as nnU-Net does for CT.
    image = _box_blur(intensity)
    image = image + 0.15 * torch.sin(_warp(x, gen, 0.5)[0] * 1.5)
    image = image + spec.noise * torch.randn(size, generator=gen, dtype=torch.float64)
    image = (image - image.mean()) / image.std()
    return image.float()[None], label[None]


def make_cases(task: str, size: Sequence[int], count: int, seed: int, offset: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``count`` cases of ``task``: case ``i`` uses the seed derived from ``(seed, task, offset + i)``."""
    return [make_case(task, size, case_seed(task, seed, offset + i)) for i in range(count)]


def case_seed(task: str, seed: int, index: int) -> int:
    """A stable seed per (task, run seed, case index) (no Python ``hash``, which is salted per process)."""
    t = sum((i + 1) * ord(c) for i, c in enumerate(task))
    return (seed * 1_000_003 + t * 10_007 + index) % (2**63 - 1)
