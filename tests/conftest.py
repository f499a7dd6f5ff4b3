"""Test setup. TRITON_INTERPRET must be set before fastloss (and its @triton.jit kernels) is imported:
with no GPU, the Triton kernels run on CPU tensors under Triton's interpreter."""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Third-party warnings that say nothing about fastloss, filtered by where they come from (fastloss's own
# warnings, and these categories from any other module, still show):
THIRD_PARTY_WARNINGS = [
    # Triton's interpreter converts 1-element numpy arrays to int (numpy >= 1.25 deprecates it): ~800
    # per run, one per interpreted program
    r"ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning:triton\.runtime\.interpreter",
    # the interpreter evaluates masked-off lanes too, where inf - inf or nan arithmetic is expected
    r"ignore:invalid value encountered:RuntimeWarning:triton\.runtime\.interpreter",
    r"ignore:overflow encountered:RuntimeWarning:triton\.runtime\.interpreter",
    r"ignore:divide by zero encountered:RuntimeWarning:triton\.runtime\.interpreter",
    # torch deprecates torch.jit.script_method, which third-party imports (e.g. MONAI's) still call
    r"ignore:`torch\.jit\.script_method` is deprecated:DeprecationWarning:torch\.jit\._script",
]


def _cuda_skip_reason() -> str:
    why = "torch.cuda.is_available() is False"
    if torch.version.cuda is None:
        why += f" (torch {torch.__version__} is a CPU-only build)"
    return f"needs a CUDA GPU: {why}; these run on a GPU machine (benchmarks/gpu_session.sh)"


def pytest_configure(config):
    for line in THIRD_PARTY_WARNINGS:
        config.addinivalue_line("filterwarnings", line)
    # list the skip reasons in the summary (-rs), so a skipped CUDA test says why
    chars = getattr(config.option, "reportchars", None)
    if chars is not None and "s" not in chars and "a" not in chars.lower():
        config.option.reportchars = chars + "s"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason=_cuda_skip_reason())
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")


@pytest.fixture
def triton_backend(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")


# Tests marked `large` (tests/test_large.py: more than 2^31 elements, up to 16 GiB of memory) run only when
# asked: `pytest --run-large`, or a -m expression that names the marker (`pytest -m large`).
def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False,
                     help="run the tests marked large (more than 2^31 elements, up to 16 GiB of memory)")


def pytest_runtest_setup(item):
    if "large" in item.keywords and not (item.config.getoption("--run-large")
                                         or "large" in (item.config.getoption("markexpr") or "")):
        pytest.skip("marked large (more than 2^31 elements, up to 16 GiB of memory): run with --run-large or -m large")
