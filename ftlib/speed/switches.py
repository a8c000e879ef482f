"""Every speed option by name, and one way to switch any of them off: the FTLIB_SPEED_OFF variable.

ftlib switches its speed options on by itself where they apply (most need a CUDA GPU), and each keeps the
math: the same loss on the same batch. To leave some of them off, to compare or to rule one out, name them
in the environment variable FTLIB_SPEED_OFF, separated by commas, before the call that applies them:

    FTLIB_SPEED_OFF=fused_lora,nf4_kernel python my_training.py
    %env FTLIB_SPEED_OFF=fused_lora          # in a notebook, above the cells that load and train

FTLIB_PLAIN=1 switches every option off at once, except the NaN guard's checks (nan_guard, nan_restore),
which guard a run rather than speed it up. An unknown name raises FtlibError with the list of known names.

Each option asks `on(name)` where it is applied, so the variable counts when that call runs:

    load_model   liger, torch_rms_norm, expandable_segments
    add_lora     offload
    train        fused_lora, siblings, unread_outputs, nf4_kernel, direct_dequant, adamw_8bit, labelled_logits,
                 varied_length_attention, nan_guard, nan_restore
    backward     prefetch (each offloaded layer, as its recomputation starts)

padding_free is not part of `train`; it applies where `acceleration.trainer_settings(model, padding_free=True)`
asks for it. `python -m ftlib.speed.switches` prints the table and what is off now.
"""

import os

from ftlib.errors import FtlibError

OFF_VARIABLE = "FTLIB_SPEED_OFF"
PLAIN_VARIABLE = "FTLIB_PLAIN"

# name -> what the option does (and what runs instead when it is off)
OPTIONS = {
    "liger": "Liger's SwiGLU and RoPE kernels and a fused RMSNorm on a CUDA GPU (off: the model's own layers)",
    "torch_rms_norm": "PyTorch's one-kernel RMSNorm for Llama-style norms (off: Liger's RMSNorm kernel there)",
    "fused_lora": "each LoRA update summed inside the frozen layer's matrix multiply (off: PEFT's forward)",
    "siblings": "projections of one input (q, k, v; gate, up) computed in one fused call (off: one by one)",
    "unread_outputs": "down_proj's frozen multiply left out of the recomputation, where nothing reads its output",
    "nf4_kernel": "ftlib's one-pass kernel makes 4-bit weights dense (off: bitsandbytes' kernels)",
    "direct_dequant": "bitsandbytes' de-quantisers called as C functions where the NF4 kernel does not serve "
                      "(off: through its PyTorch operators)",
    "offload": 'use_gradient_checkpointing="offload" keeps layer inputs in CPU memory (off: on the GPU, as True)',
    "prefetch": "an offloaded layer input copied back one layer before it is needed (off: when it is needed)",
    "padding_free": "rows laid end to end without padding, where trainer_settings(padding_free=True) asks",
    "adamw_8bit": "8-bit AdamW on a GPU: 2 bytes of optimizer state per trained number (off: AdamW, 8 bytes)",
    "expandable_segments": "growable CUDA memory segments: less reserved memory lost to fragmentation",
    "varied_length_attention": "flash attention instead of cuDNN's while rows of varying length train "
                               "(cuDNN plans anew for every new length)",
    "labelled_logits": "on a CPU, output-layer logits only where a label is learned (off: at every position)",
    "nan_guard": "train's check of the gradients for NaN or inf before each optimizer step (one GPU sync a step)",
    "nan_restore": "train's check of the trained weights after each optimizer step, and a copy of the last finite "
                   "ones put back when a step turns them NaN or inf (one GPU sync and one copy a step)",
}
KEPT_BY_PLAIN = {"nan_guard", "nan_restore"}  # safeguards, not speed-ups: FTLIB_PLAIN=1 leaves them on

_parsed = (None, None, frozenset())  # (FTLIB_PLAIN, FTLIB_SPEED_OFF, names off) as last read


def names(text):
    """The option names in a comma-separated `text`; FtlibError for a name that is not an option.

    Example: `names("fused_lora, nf4_kernel")  # ('fused_lora', 'nf4_kernel')`
    """
    found = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    unknown = [name for name in found if name not in OPTIONS]
    if unknown:
        which = "which is not a speed option" if len(unknown) == 1 else "which are not speed options"
        raise FtlibError(
            f"{OFF_VARIABLE} names {', '.join(map(repr, unknown))}, {which}: use any of "
            f"{', '.join(OPTIONS)} (ftlib/speed/switches.py says what each does), separated by commas"
        )
    return found


def plain_requested():
    """True when FTLIB_PLAIN=1 (or true, yes) asks for the plain path. Example: `plain_requested()`."""
    return os.environ.get(PLAIN_VARIABLE, "").strip().lower() in {"1", "true", "yes"}


def switched_off():
    """The names of the options switched off now: FTLIB_SPEED_OFF's, and all but the NaN guard's under FTLIB_PLAIN=1.

    Example: `switched_off()  # frozenset({'fused_lora'}) under FTLIB_SPEED_OFF=fused_lora`
    """
    global _parsed
    plain, named = os.environ.get(PLAIN_VARIABLE, ""), os.environ.get(OFF_VARIABLE, "")
    if (plain, named) != _parsed[:2]:  # read again only when the variables changed
        off = set(names(named))
        if plain_requested():
            off |= set(OPTIONS) - KEPT_BY_PLAIN
        _parsed = (plain, named, frozenset(off))
    return _parsed[2]


def on(name):
    """False when the option `name` is switched off, else True. Example: `if on("fused_lora"): ...`"""
    if name not in OPTIONS:
        raise FtlibError(f"{name!r} is not a speed option: use any of {', '.join(OPTIONS)}")
    return name not in switched_off()


def table():
    """The options as text: name, on or off now, what each does. Example: `print(table())`."""
    off = switched_off()
    width = max(map(len, OPTIONS))
    return "\n".join(f"{name:<{width}}  {'off' if name in off else 'on '}  {what}" for name, what in OPTIONS.items())


if __name__ == "__main__":
    print(table())
