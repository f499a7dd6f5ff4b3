"""fastloss: the segmentation losses of Ma et al., "Loss odyssey in medical image segmentation"
(MedIA 2021), as drop-in PyTorch losses with fused kernels, and an exact CPU/GPU distance transform."""

__version__ = "0.1.0"
