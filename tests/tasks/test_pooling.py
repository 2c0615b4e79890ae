"""Poolings on a small masked batch against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from minbert.tasks.pooling import POOLINGS, pool

# B=2, T=3, H=2. Row 0 has three real tokens; row 1 has two and one padded position whose
# state (100, 100) would win a max and shift a mean if padding leaked in.
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        [[1.0, -1.0], [2.0, -2.0], [100.0, 100.0]],
    ]
)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
POOLER = torch.tensor([[0.1, 0.2], [0.3, 0.4]])


def test_registry_names():
    assert set(POOLINGS) == {"cls", "cls_raw", "mean", "max"}


def test_cls_returns_pooler_output():
    torch.testing.assert_close(pool("cls", HIDDEN, MASK, POOLER), torch.tensor([[0.1, 0.2], [0.3, 0.4]]))


def test_cls_without_pooler_suggests_cls_raw():
    with pytest.raises(ValueError, match="cls_raw"):
        pool("cls", HIDDEN, MASK, None)


def test_cls_raw_is_first_token():
    torch.testing.assert_close(pool("cls_raw", HIDDEN, MASK, POOLER), torch.tensor([[1.0, 2.0], [1.0, -1.0]]))


def test_mean_ignores_padding():
    # row 0: ((1+3+5)/3, (2+4+6)/3) = (3, 4); row 1: ((1+2)/2, (-1-2)/2) = (1.5, -1.5)
    torch.testing.assert_close(pool("mean", HIDDEN, MASK, POOLER), torch.tensor([[3.0, 4.0], [1.5, -1.5]]))


def test_max_ignores_padding():
    # row 0: (max(1,3,5), max(2,4,6)) = (5, 6); row 1: (max(1,2), max(-1,-2)) = (2, -1)
    torch.testing.assert_close(pool("max", HIDDEN, MASK, POOLER), torch.tensor([[5.0, 6.0], [2.0, -1.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_max_padding_never_wins_over_very_negative_states(dtype):
    # real states far below any small fill value (e.g. -1e4); the padded state is 0
    h = torch.tensor([[[-6e4, -5e4], [0.0, 0.0]]], dtype=dtype)
    out = pool("max", h, torch.tensor([[1, 0]]), None)
    torch.testing.assert_close(out, torch.tensor([[-6e4, -5e4]], dtype=dtype))


def test_mask_dtypes_agree():
    for m in (MASK.bool(), MASK.float(), MASK.long()):
        torch.testing.assert_close(pool("mean", HIDDEN, m), torch.tensor([[3.0, 4.0], [1.5, -1.5]]))


def test_no_mask_means_no_padding():
    # row 1 with its third state counted: ((1+2+100)/3, (-1-2+100)/3)
    expected = torch.tensor([[3.0, 4.0], [103 / 3, 97 / 3]])
    torch.testing.assert_close(pool("mean", HIDDEN, None), expected)


def test_mean_of_all_padding_row_is_zero_not_nan():
    out = pool("mean", HIDDEN, torch.tensor([[1, 1, 1], [0, 0, 0]]))
    torch.testing.assert_close(out[1], torch.zeros(2))


def test_mean_gradient_skips_padding():
    h = HIDDEN.clone().requires_grad_(True)
    pool("mean", h, MASK).sum().backward()
    expected = torch.tensor([[[1 / 3] * 2] * 3, [[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]]])
    torch.testing.assert_close(h.grad, expected)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"'cls', 'cls_raw', 'max', 'mean'"):
        pool("attention", HIDDEN, MASK, POOLER)


def test_mask_shape_mismatch():
    with pytest.raises(ValueError, match="attention_mask"):
        pool("mean", HIDDEN, torch.ones(2, 4))
