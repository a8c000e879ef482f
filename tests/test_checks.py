"""check_positive: the shared "positive whole number" check and the message that names the fix."""

import pytest

from ftlib.checks import check_positive
from ftlib.errors import FtlibError


def test_accepts_positive_numbers_and_allowed_none():
    check_positive("batch_size", 1, "batch_size=8")
    check_positive("num_train_epochs", 0.5, "1 to 3", whole=False)
    check_positive("max_examples", None, "100", allow_none=True)


@pytest.mark.parametrize("value", [0, -3, True, False, 2.0, "8", None])
def test_refuses_what_is_not_a_positive_whole_number(value):
    with pytest.raises(FtlibError) as failure:
        check_positive("batch_size", value, "batch_size=8")
    assert str(failure.value) == f"batch_size must be a positive whole number, got {value!r}: try batch_size=8"


def test_message_says_what_else_is_allowed():
    with pytest.raises(FtlibError, match=r"^max_examples must be a positive whole number or None, got 0: try 100$"):
        check_positive("max_examples", 0, "100", allow_none=True)
    with pytest.raises(FtlibError, match=r"^learning_rate must be a positive number, got -1: try 2e-4$"):
        check_positive("learning_rate", -1, "2e-4", whole=False)
