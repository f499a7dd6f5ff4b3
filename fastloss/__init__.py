"""fastloss: the segmentation losses of Ma et al., "Loss odyssey in medical image segmentation"
(MedIA 2021), as drop-in PyTorch losses with fused kernels, and an exact CPU/GPU distance transform."""

__version__ = "0.1.0"

from . import functional, losses  # noqa: E402
from .distance import distance_field, edt, hausdorff_distance_maps, signed_distance  # noqa: E402
from .skeleton import skeletonize  # noqa: E402
from .losses import *  # noqa: E402,F401,F403
from .losses import __all__ as _loss_names  # noqa: E402
from .registry import PAPER_LOSSES, get_loss, paper_loss_names  # noqa: E402
from .class_weights import class_counts, class_weights  # noqa: E402  (the name is the function, not the module)

__all__ = [
    *_loss_names,
    "PAPER_LOSSES", "get_loss", "paper_loss_names", "class_counts", "class_weights", "edt", "signed_distance",
    "distance_field", "hausdorff_distance_maps", "skeletonize", "functional", "losses", "metrics", "ranking", "__version__",
]


def __getattr__(name):
    # metrics and ranking import lazily (ranking needs scipy only when used)
    if name in ("metrics", "ranking", "reference", "distributed"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastloss' has no attribute {name!r}")
