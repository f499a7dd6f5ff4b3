"""Small things a new user hits (issue 12): the label-range error names ignore_index for the usual
"unlabelled" codes, and TopKLoss's repr shows what selects its voxels."""

import pytest
import torch

import fastloss
from fastloss.losses.distribution import TopKLoss


@pytest.mark.parametrize("code", [255, -1])
def test_label_range_error_suggests_ignore_index(torch_backend, code):
    x = torch.randn(1, 3, 4, 4)
    lab = torch.randint(0, 3, (1, 4, 4))
    lab[0, 0, 0] = code
    with pytest.raises(ValueError, match=rf"found \[{code}\] \(if {code} marks unlabelled voxels, pass ignore_index={code}"):
        fastloss.get_loss("DiceCE")(x, lab)
    # with the suggested ignore_index the same input is accepted and the voxel is left out
    got = fastloss.get_loss("CE", ignore_index=code)(x, lab)
    want = torch.nn.functional.cross_entropy(x, lab, ignore_index=code)
    torch.testing.assert_close(got, want)


def test_label_range_error_without_a_usual_code_has_no_hint(torch_backend):
    lab = torch.full((1, 4, 4), 7)
    with pytest.raises(ValueError, match=r"found \[7\]$"):
        fastloss.get_loss("CE")(torch.randn(1, 3, 4, 4), lab)


def test_topk_repr_shows_k_or_t():
    assert repr(fastloss.get_loss("TopK")) == "TopKLoss(k=10.0, reduction='mean')"
    assert repr(TopKLoss(k=5)) == "TopKLoss(k=5.0, reduction='mean')"
    assert repr(TopKLoss(t=0.3, ignore_index=255)) == "TopKLoss(t=0.3, reduction='mean', ignore_index=255)"
    assert "k=10.0" in repr(fastloss.get_loss("DiceTopK"))
