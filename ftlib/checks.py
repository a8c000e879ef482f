"""Argument checks shared by the steps, so every "must be a positive whole number" reads the same."""

from ftlib.errors import FtlibError


def check_positive(name, value, hint, whole=True, allow_none=False):
    """Raise FtlibError naming `hint` unless `value` is a positive (whole) number, or None when allowed.

    True and False are refused although Python counts them as 1 and 0: `batch_size=True` is a mistake.

    Example:
        >>> check_positive("batch_size", 0, "batch_size=8")
        Traceback (most recent call last):
        ftlib.errors.FtlibError: batch_size must be a positive whole number, got 0: try batch_size=8
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
        what = "a positive whole number" if whole else "a positive number"
        or_none = " or None" if allow_none else ""
        raise FtlibError(f"{name} must be {what}{or_none}, got {value!r}: try {hint}")


CHECKPOINTING_MODES = (True, False, "offload")


def check_checkpointing(name, value):
    """Raise FtlibError unless `value` is a gradient-checkpointing mode: True, False or "offload".

    Example: `check_checkpointing("use_gradient_checkpointing", "yes")  # FtlibError naming the three modes`
    """
    if not any(value is mode or (isinstance(mode, str) and value == mode) for mode in CHECKPOINTING_MODES):
        raise FtlibError(f"{name} must be True, False or 'offload', got {value!r}: try 'offload' (the default, "
                         "least GPU memory), True (layer inputs stay on the GPU, a little faster) or False "
                         "(nothing recomputed, the most memory)")
