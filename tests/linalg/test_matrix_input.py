"""The one matrix check: what it accepts, what it returns, and how it words a refusal."""

from __future__ import annotations

import pytest
import torch

from svdguard.errors import InputError
from svdguard.linalg.matrix_input import check_matrix, matrix_batch, square_batch


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.complex128, torch.complex128),
    ],
)
def test_returns_the_matrix_in_its_compute_dtype(dtype: torch.dtype, expected: torch.dtype) -> None:
    a = torch.arange(6.0).reshape(2, 3).to(dtype)
    checked = check_matrix(a, "f")
    assert checked.dtype == expected and checked.shape == (2, 3)
    assert torch.equal(checked.to(torch.complex128), a.to(torch.complex128))


def test_a_tensor_already_in_its_compute_dtype_is_returned_as_is() -> None:
    a = torch.ones(2, 2, 3, dtype=torch.float64)
    assert check_matrix(a) is a


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[1.0]], r"^f: expected a torch.Tensor, got list$"),
        (torch.zeros(3), r"^f: shape \(3,\) is not a matrix"),
        (torch.zeros(3, 3, dtype=torch.int64), r"^f: dtype torch.int64 is not a floating dtype"),
        (torch.zeros(3, 3, dtype=torch.bool), r"^f: dtype torch.bool is not a floating dtype"),
        (torch.zeros(0, 3), r"^f: shape \(0, 3\) has no entries"),
        (torch.zeros(2, 3, 0), r"^f: shape \(2, 3, 0\) has no entries"),
    ],
)
def test_refusals_name_the_caller_and_the_problem(value: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_matrix(value, "f")


def test_refusals_name_the_file_and_key() -> None:
    with pytest.raises(InputError, match=r"^m.npy\[w\]: shape \(3,\) is not a matrix"):
        check_matrix(torch.zeros(3), path="m.npy", key="w")


def test_empty_matrices_pass_when_allowed() -> None:
    assert check_matrix(torch.zeros(0, 3), "f", allow_empty=True).shape == (0, 3)


def test_batch_helpers_return_the_input_dtype_and_check_squareness() -> None:
    work, out_dtype = matrix_batch(torch.ones(2, 2, dtype=torch.bfloat16), "f")
    assert work.dtype == torch.float32 and out_dtype == torch.bfloat16
    with pytest.raises(InputError, match=r"f: expected square matrices"):
        square_batch(torch.ones(2, 3), "f")
