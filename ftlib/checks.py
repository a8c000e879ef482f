"""Argument and weight checks shared by the steps, so every "must be a positive whole number" reads the same.

A NaN or an infinity never passes a number check: `float("nan") <= 0` is False in Python, so a plain
comparison would let it through and the run would fail (or go silently wrong) much later.
"""

import math
import numbers

from ftlib.errors import FtlibError


def _describe(value):
    """`value` as the message shows it; NaN and infinities say what they are."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        return f"{value!r} (not a finite number)"
    return repr(value)


def is_number(value, whole=False):
    """A finite int or float (a whole one when `whole`), never a bool.

    Example:
        >>> is_number(float("nan"))
        False
    """
    kind = numbers.Integral if whole else numbers.Real
    return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(name, value, hint, whole=True, allow_none=False):
    """Raise FtlibError naming `hint` unless `value` is a positive (whole) number, or None when allowed.

    True and False are refused although Python counts them as 1 and 0: `batch_size=True` is a mistake.
    NaN and infinities are refused too.

    Example:
        >>> check_positive("batch_size", 0, "batch_size=8")
        Traceback (most recent call last):
        ftlib.errors.FtlibError: batch_size must be a positive whole number, got 0: try batch_size=8
    """
    if value is None and allow_none:
        return
    if not is_number(value, whole) or value <= 0:
        what = "a positive whole number" if whole else "a positive number"
        or_none = " or None" if allow_none else ""
        raise FtlibError(f"{name} must be {what}{or_none}, got {_describe(value)}: try {hint}")


def check_range(name, value, hint, *, low=None, high=None, low_open=False, high_open=False, whole=False,
                allow_none=False):
    """Raise FtlibError naming `hint` unless `value` is a finite number within [low, high] (open ends as asked).

    Example:
        >>> check_range("top_p", 1.5, "0.9", low=0, high=1, low_open=True)
        Traceback (most recent call last):
        ftlib.errors.FtlibError: top_p must be a number above 0 and at most 1, got 1.5: try 0.9
    """
    if value is None and allow_none:
        return
    inside = is_number(value, whole) and (
        (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high)))
    if inside:
        return
    bounds = []
    if low is not None:
        bounds.append(f"{'above' if low_open else 'at least'} {low:g}")
    if high is not None:
        bounds.append(f"{'below' if high_open else 'at most'} {high:g}")
    what = f"a {'whole ' if whole else ''}number" + (f" {' and '.join(bounds)}" if bounds else "")
    or_none = " (or None)" if allow_none else ""
    raise FtlibError(f"{name} must be {what}{or_none}, got {_describe(value)}: try {hint}")


def check_choice(name, value, choices, hint=None):
    """Raise FtlibError unless `value` is one of `choices`; the message lists them.

    Example:
        >>> check_choice("too_long", "cut", ("truncate", "drop"))
        Traceback (most recent call last):
        ftlib.errors.FtlibError: too_long must be one of 'truncate', 'drop', got 'cut'
    """
    if isinstance(value, str) and value in choices:
        return
    listed = ", ".join(repr(choice) for choice in choices)
    advice = f": try {hint}" if hint else ""
    raise FtlibError(f"{name} must be one of {listed}, got {value!r}{advice}")


def check_flag(name, value):
    """Raise FtlibError unless `value` is True or False (a string 'False' would count as true).

    Example:
        >>> check_flag("verbose", "no")
        Traceback (most recent call last):
        ftlib.errors.FtlibError: verbose must be True or False, got 'no'
    """
    if not isinstance(value, bool):
        raise FtlibError(f"{name} must be True or False, got {value!r}")


def check_tokenizer(tokenizer, where):
    """Raise FtlibError unless `tokenizer` looks like a Hugging Face tokenizer (callable, with decode).

    Example:
        >>> check_tokenizer(None, "train")
        Traceback (most recent call last):
        ftlib.errors.FtlibError: train needs the tokenizer that load_model returned, got NoneType: ...
    """
    if not (callable(tokenizer) and callable(getattr(tokenizer, "decode", None))):
        raise FtlibError(f"{where} needs the tokenizer that load_model returned, got {type(tokenizer).__name__}: "
                         "model, tokenizer = load_model(...), then pass both")


CHECKPOINTING_MODES = (True, False, "offload")


def check_checkpointing(name, value, auto=False):
    """Raise FtlibError unless `value` is a gradient-checkpointing mode: True, False or "offload" (and "auto",
    train's choice by the memory budget, where `auto` is True).

    Example: `check_checkpointing("use_gradient_checkpointing", "yes")  # FtlibError naming the three modes`
    """
    modes = CHECKPOINTING_MODES + (("auto",) if auto else ())
    if not any(value is mode or (isinstance(mode, str) and value == mode) for mode in modes):
        first = ("'offload' (the default: every layer recomputed, least GPU memory), 'auto' (as few layers "
                 "recomputed as the GPU's memory allows)" if auto else "'offload' (every layer recomputed, least GPU memory)")
        named = "'auto', True, False or 'offload'" if auto else "True, False or 'offload'"
        raise FtlibError(f"{name} must be {named}, got {value!r}: try "
                         f"{first}, True (layer inputs stay on the GPU, a little faster) or False "
                         "(nothing recomputed, the most memory)")


# ----------------------------------------------------------------------------- weights


def non_finite_weights(model, trainable_only=False, remember=False):
    """Names of the model's floating-point weights that hold a NaN or an infinity; [] when all are finite.

    One reduction per weight and a single synchronisation: the sum of a tensor is NaN or infinite
    exactly when one of its values is (summed in float64, which no float32 total can overflow), and a
    sum needs no mask as large as the weight. Quantised (4-bit, 8-bit) storage and weights on the
    "meta" device are skipped. With remember=True a model found finite is not read again until a weight
    changes, as PyTorch's version counters tell (every optimizer step and in-place edit counts; an edit
    through `parameter.data` does not): what generate uses, so a loop of calls pays once.

    Example:
        >>> non_finite_weights(model)
        []
    """
    import torch

    named = [(name, parameter) for name, parameter in model.named_parameters()
             if parameter.dtype.is_floating_point and parameter.device.type != "meta"
             and (parameter.requires_grad or not trainable_only)]
    if not named:
        return []
    key = (trainable_only, tuple((parameter.data_ptr(), parameter._version) for _, parameter in named))
    if remember and getattr(model, "_ftlib_finite_weights", None) == key:
        return []
    if all_finite([parameter for _, parameter in named]):
        model._ftlib_finite_weights = key
        return []
    with torch.no_grad():
        return [name for name, parameter in named if not bool(torch.isfinite(parameter.detach()).all())]


def all_finite(tensors):
    """True when no tensor in `tensors` holds a NaN or an infinity: one reduction each, one synchronisation.

    Example:
        >>> all_finite([torch.tensor([1.0, float("inf")])])
        False
    """
    import torch

    if not tensors:
        return True
    with torch.no_grad():
        first = tensors[0].device
        finite = [torch.isfinite(tensor.detach().sum(dtype=torch.float32 if tensor.device.type == "mps"
                                                     else torch.float64)).to(first)  # MPS has no float64
                  for tensor in tensors]
        return bool(torch.stack(finite).all())


def describe_weights(names, limit=3):
    """'2 weights (layers.0.q_proj.lora_B.weight, layers.1.q_proj.lora_B.weight)' for a message.

    Example:
        >>> describe_weights(["a.weight"])
        '1 weight (a.weight)'
    """
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{len(names)} weight{'s' if len(names) != 1 else ''} ({shown})"
