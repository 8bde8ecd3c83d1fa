"""The output convention: 1 logit for binary, K logits for K >= 3 classes."""

import pytest
import torch

from unetkit.outputs import labels, logit_channels, num_classes_of, probabilities


def test_channels_and_classes_are_inverse():
    assert [logit_channels(k) for k in (2, 3, 5)] == [1, 3, 5]
    assert [num_classes_of(logit_channels(k)) for k in (2, 3, 5)] == [2, 3, 5]
    with pytest.raises(ValueError, match=">= 2; got 1"):
        logit_channels(1)


def test_binary_logit_gives_sigmoid_pair_and_threshold_labels():
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]])  # (1, 1, 1, 3)
    p = torch.sigmoid(torch.tensor([0.0, 2.0, -1.0]))
    probs = probabilities(logits)
    assert probs.shape == (1, 2, 1, 3)
    assert torch.allclose(probs[0, 1, 0], p) and torch.allclose(probs[0, 0, 0], 1 - p)
    assert labels(logits).tolist() == [[[0, 1, 0]]]  # logit 0 (p = 0.5) is background


def test_several_logits_give_softmax_and_argmax():
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]], [[2.0, 0.0]]]])  # (1, 3, 1, 2)
    probs = probabilities(logits.to(torch.bfloat16))
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(1), torch.ones(1, 1, 2))
    assert labels(logits).tolist() == [[[2, 1]]]
