"""Datasets for the odyssey runner: synthetic tasks, folders of image/label pairs, nnU-Net raw datasets,
and the training batches (random crops with nnU-Net's foreground oversampling, mirroring, intensity
jitter), drawn from one seeded generator so that every loss sees the same batches.

Folder layouts read by :func:`load_folder`:

- nnU-Net raw (v2): ``dataset.json``, ``imagesTr/CASE_0000<ending>`` (one file per channel,
  ``_0001``... for more channels) and ``labelsTr/CASE<ending>``; ``dataset.json`` gives
  ``file_ending`` (default ``.nii.gz``) and ``labels`` (``{"background": 0, ...}``).
- plain: ``images/CASE<ending>`` and ``labels/CASE<ending>`` with the same names.

Files are NIfTI (``.nii.gz``, ``.nii``; needs ``nibabel``) or NumPy (``.npy``: an array ``(*spatial)``
or ``(channels, *spatial)`` for images, spacing 1). Volumes are used at their own resolution (no
resampling: give cases of similar spacing, as nnU-Net's preprocessing would); each image is clipped to
its 0.5 and 99.5 percentiles and z-scored (nnU-Net's CT normalisation, per case). NSD uses each
case's spacing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import synthetic

__all__ = ["Case", "Dataset", "synthetic_dataset", "load_folder", "BatchSampler"]

_ENDINGS = (".nii.gz", ".nii", ".npy")


@dataclass
class Case:
    """One volume: ``image`` float32 ``(channels, *spatial)``, ``label`` int64 ``(1, *spatial)``."""

    name: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: Tuple[float, ...] = (1.0, 1.0, 1.0)


@dataclass
class Dataset:
    """A task: its name, class names (index = label; 0 is the background) and train/test cases."""

    name: str
    class_names: Tuple[str, ...]
    train: List[Case]
    test: List[Case]
    meta: Dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train[0].image.shape[0])


def synthetic_dataset(task: str, size: Sequence[int], n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """A synthetic task of :mod:`fastloss.odyssey.synthetic` with ``n_train`` + ``n_test`` cases."""
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    cases = [
        Case(f"{task}_{i:03d}", *synthetic.make_case(task, size, synthetic.case_seed(task, seed, i)))
        for i in range(n_train + n_test)
    ]
    spec = synthetic.TASKS[task]
    return Dataset(task, spec.class_names, cases[:n_train], cases[n_train:], {"source": "synthetic", "size": list(size)})


# ---------------------------------------------------------------------------------------- folders
def _strip_ending(name: str) -> Optional[Tuple[str, str]]:
    for e in _ENDINGS:
        if name.endswith(e):
            return name[: -len(e)], e
    return None


def _read_volume(path: Path) -> Tuple[torch.Tensor, Tuple[float, ...]]:
    """``(array as a float64 tensor, spacing)``; NIfTI axes are reversed to (z, y, x)."""
    if path.name.endswith(".npy"):
        import numpy as np

        arr = np.load(path, allow_pickle=False)
        return torch.from_numpy(np.ascontiguousarray(arr)).double(), None
    try:
        import nibabel
    except ImportError:
        raise ImportError(
            f"reading {path.name} needs nibabel: pip install nibabel (or pip install 'fastloss[odyssey]')"
        ) from None
    import numpy as np

    img = nibabel.load(str(path))
    arr = np.asarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[: arr.ndim])
    # NIfTI stores (x, y, z); the networks here see (z, y, x) as nnU-Net's SimpleITK reader does.
    arr = np.ascontiguousarray(np.transpose(arr, tuple(range(arr.ndim))[::-1]))
    return torch.from_numpy(arr).double(), zooms[::-1]


def _normalise(img: torch.Tensor) -> torch.Tensor:
    """Per channel: clip to the [0.5, 99.5] percentiles, then z-score."""
    out = torch.empty_like(img, dtype=torch.float32)
    for c in range(img.shape[0]):
        v = img[c]
        flat = v.flatten()
        if flat.numel() > 1_000_000:  # torch.quantile's input limit is 16M; a strided sample suffices
            flat = flat[:: flat.numel() // 1_000_000 + 1]
        lo, hi = torch.quantile(flat, torch.tensor([0.005, 0.995], dtype=flat.dtype))
        v = v.clamp(lo, hi)
        sd = v.std()
        out[c] = ((v - v.mean()) / (sd if sd > 0 else 1.0)).float()
    return out


def _list_cases(folder: Path, what: str) -> Dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: expected a folder of {what}, found none")
    out = {}
    for p in sorted(folder.iterdir()):
        parts = _strip_ending(p.name)
        if parts is not None and not p.name.startswith("."):
            out[parts[0]] = p
    return out


def load_folder(path, test_fraction: float = 0.2, seed: int = 0, max_cases: Optional[int] = None) -> Dataset:
    """Load a user dataset (an nnU-Net raw dataset or a folder with ``images/`` and ``labels/``) and
    split it into train and test cases at random (the paper: 80 % / 20 %).

    Args:
        path: the dataset folder.
        test_fraction: the share of cases held out for testing, in (0, 1); at least one case each side.
        seed: the split's seed.
        max_cases: read at most this many cases (the first ones by name), or all.

    Returns:
        A :class:`Dataset` named after the folder.

    Raises:
        ValueError: no such folder, no cases, an image without a label (or a label without an image),
            an image and label of different spatial shapes, non-integer or negative labels, labels
            outside ``dataset.json``'s, fewer than 2 cases, or a bad ``test_fraction``; each message
            names the case.
        ImportError: NIfTI files and no nibabel.

    Example:
        >>> ds = load_folder("nnUNet_raw/Dataset004_Hippocampus")  # doctest: +SKIP
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    meta_labels = None
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        info = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").is_file() else {}
        ending = info.get("file_ending", ".nii.gz")
        meta_labels = info.get("labels")
        n_channels = len(info.get("channel_names", info.get("modality", {"0": ""}))) or 1
        images = _list_cases(root / "imagesTr", "training images (imagesTr)")
        labels = _list_cases(root / "labelsTr", "training labels (labelsTr)")
        by_case: Dict[str, List[Path]] = {}
        for stem, p in images.items():
            if len(stem) < 5 or stem[-5] != "_" or not stem[-4:].isdigit():
                raise ValueError(f"{p}: nnU-Net image names end in _XXXX (the channel), e.g. CASE_0000{ending}")
            by_case.setdefault(stem[:-5], []).append(p)
        for case, files in by_case.items():
            if len(files) != n_channels:
                raise ValueError(f"case {case!r}: expected {n_channels} channel file(s) in imagesTr, found {len(files)}")
        layout = "nnU-Net raw"
    elif (root / "images").is_dir() or (root / "labels").is_dir():
        images = _list_cases(root / "images", "images")
        labels = _list_cases(root / "labels", "labels")
        by_case = {stem: [p] for stem, p in images.items()}
        layout = "images/labels"
    else:
        raise ValueError(
            f"{root}: expected an nnU-Net raw dataset (dataset.json, imagesTr/, labelsTr/) or a folder with "
            f"images/ and labels/ subfolders; found {sorted(p.name for p in root.iterdir())[:10]}"
        )
    no_label = sorted(set(by_case) - set(labels))
    if no_label:
        raise ValueError(f"case {no_label[0]!r} has an image but no label file ({len(no_label)} such case(s): {no_label[:5]})")
    no_image = sorted(set(labels) - set(by_case))
    if no_image:
        raise ValueError(f"case {no_image[0]!r} has a label but no image file ({len(no_image)} such case(s): {no_image[:5]})")
    names = sorted(by_case)
    if max_cases is not None:
        names = names[:max_cases]
    if len(names) < 2:
        raise ValueError(f"{root}: need at least 2 cases (one to train, one to test), found {len(names)}")

    allowed = None
    if isinstance(meta_labels, dict):
        allowed = {int(v) for v in meta_labels.values() if not isinstance(v, (list, tuple))}
    cases = []
    for name in names:
        chans, spacing = [], None
        for p in by_case[name]:
            arr, sp = _read_volume(p)
            if len(by_case[name]) > 1 or arr.dim() == 3:
                arr = arr[None]
            chans.append(arr)
            spacing = spacing or sp
        img = torch.cat(chans) if len(chans) > 1 else chans[0]
        lab, _ = _read_volume(labels[name])
        if lab.dim() == img.dim():
            lab = lab[0] if lab.shape[0] == 1 else lab
        if img.dim() != 4:
            raise ValueError(f"case {name!r}: expected a 3D image (or channels x 3D), got shape {tuple(img.shape)}")
        if tuple(lab.shape) != tuple(img.shape[1:]):
            raise ValueError(
                f"case {name!r}: image and label shapes differ: image {tuple(img.shape[1:])}, label {tuple(lab.shape)}"
            )
        if not bool(torch.all(lab == lab.round())) or bool((lab < 0).any()):
            raise ValueError(f"case {name!r}: labels must be non-negative integers")
        lab = lab.long()
        if allowed is not None:
            extra = sorted(set(torch.unique(lab).tolist()) - allowed)
            if extra:
                raise ValueError(f"case {name!r}: label values {extra} are not in dataset.json's labels {sorted(allowed)}")
        cases.append(Case(name, _normalise(img), lab[None], tuple(spacing or (1.0,) * 3)))

    if isinstance(meta_labels, dict):
        by_value = {int(v): k for k, v in meta_labels.items() if not isinstance(v, (list, tuple))}
        num_classes = max(by_value) + 1
        class_names = tuple(by_value.get(i, f"class{i}") for i in range(num_classes))
    else:
        num_classes = max(int(c.label.max()) for c in cases) + 1
        class_names = ("background",) + tuple(f"class{i}" for i in range(1, num_classes))
    if num_classes < 2:
        raise ValueError(f"{root}: every label map is all background; nothing to segment")

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(cases), generator=gen).tolist()
    n_test = min(len(cases) - 1, max(1, round(test_fraction * len(cases))))
    test = sorted((cases[i] for i in order[:n_test]), key=lambda c: c.name)
    train = sorted((cases[i] for i in order[n_test:]), key=lambda c: c.name)
    return Dataset(root.name, class_names, train, test, {"source": str(root), "layout": layout})


# ---------------------------------------------------------------------------------------- batches
def _pad_to(x: torch.Tensor, patch: Sequence[int], value: float) -> torch.Tensor:
    pads = []
    for n, p in zip(reversed(x.shape[1:]), reversed(tuple(patch))):
        extra = max(0, p - n)
        pads += [extra // 2, extra - extra // 2]
    return torch.nn.functional.pad(x, pads, value=value) if any(pads) else x


class BatchSampler:
    """Training batches drawn from one seeded generator: the same ``seed`` gives the same batches,
    whatever loss is trained on them.

    Each sample: a random training case; a random crop of ``patch`` voxels (volumes smaller than the
    patch are padded), centred on a random foreground voxel for the last third of each batch (nnU-Net's
    ``oversample_foreground_percent = 0.33``: sample ``i`` is forced when ``i >= round(B·(1 − 0.33))``);
    mirroring along each axis with probability 1/2; an intensity scale ``U(0.9, 1.1)`` and shift
    ``U(−0.1, 0.1)`` (a light stand-in for nnU-Net's brightness/contrast/gamma augmentation).
    """

    def __init__(self, cases: Sequence[Case], patch: Sequence[int], batch_size: int, seed: int, oversample: float = 0.33):
        if not cases:
            raise ValueError("BatchSampler needs at least one training case")
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch)
        self.batch_size = int(batch_size)
        self.oversample = oversample
        self.gen = torch.Generator().manual_seed(seed)
        # foreground voxel coordinates per case, for the oversampled crops
        self._fg = [torch.nonzero(c.label[0] > 0) for c in self.cases]

    def _rand(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.gen))

    def sample(self, force_fg: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        i = self._rand(len(self.cases))
        case = self.cases[i]
        img = _pad_to(case.image, self.patch, float(case.image.min()))
        lab = _pad_to(case.label, self.patch, 0)
        shape = img.shape[1:]
        fg = self._fg[i]
        starts = []
        if force_fg and len(fg) and tuple(shape) == tuple(case.image.shape[1:]):
            centre = fg[self._rand(len(fg))].tolist()
            for n, p, c in zip(shape, self.patch, centre):
                starts.append(min(max(0, c - p // 2), n - p))
        else:
            starts = [self._rand(n - p + 1) for n, p in zip(shape, self.patch)]
        sl = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(starts, self.patch))
        img, lab = img[sl], lab[sl]
        flips = [d + 1 for d in range(len(self.patch)) if float(torch.rand(1, generator=self.gen)) < 0.5]
        if flips:
            img, lab = img.flip(flips), lab.flip(flips)
        scale = 0.9 + 0.2 * float(torch.rand(1, generator=self.gen))
        shift = -0.1 + 0.2 * float(torch.rand(1, generator=self.gen))
        return img * scale + shift, lab

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """One batch: ``(images (B, channels, *patch) float32, labels (B, 1, *patch) int64)``."""
        cut = round(self.batch_size * (1 - self.oversample))
        pairs = [self.sample(force_fg=i >= cut) for i in range(self.batch_size)]
        return torch.stack([p[0] for p in pairs]).contiguous(), torch.stack([p[1] for p in pairs]).contiguous()
