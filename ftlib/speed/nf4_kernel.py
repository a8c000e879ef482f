"""A 4-bit (NF4) weight made dense in one GPU kernel, block scales included.

QLoRA keeps each frozen weight as 4-bit codes, two to a byte, with one scale per block of 64 values; under
double quantisation those scales are themselves 8-bit codes, with one float32 scale per 256 of them and a
mean offset. Every projection of a training step makes its weight dense three times (forward, recomputation,
backward): 2,688 times per 8B step. bitsandbytes does that in three kernels (scales, offset, weight); this
kernel reads the codes and both levels of scales and writes the dense weight in one pass, so it reads the
weight once and launches once. Once compiled it is launched directly, which costs the CPU less than Triton's
own launch (benchmarks/launch_costs.py times both, and the kernel against bitsandbytes').

It computes what bitsandbytes computes, in the same float32 order and without fused multiply-adds, so the
weights are bit for bit the same (tests/test_acceleration.py checks it on a GPU, and on a CPU through Triton's
interpreter). Triton comes with PyTorch's CUDA builds; without it, or off a GPU, `dequantize` answers None and
the caller uses bitsandbytes, as it does with the switch `nf4_kernel` off (ftlib/speed/fused_lora.py asks it).
"""

import functools
import warnings

import torch

VALUES_PER_INSTANCE = 4096  # dense values one kernel instance writes: a power of two, 2048-8192 run about as fast
WARPS_PER_INSTANCE = 4  # 4 or 8: at 4,096 values an instance, 4 suit every 8B weight shape
_FAILURES = []  # the error that stopped the kernel (a Triton too old for it, a GPU it cannot compile for)
_COMPILED = {}  # kind of weight -> Triton's compiled kernel for it, launched directly (None: Triton's way only)


@functools.cache
def _kernel():
    """The Triton kernel (compiled per argument kind on first use), or None without Triton or a single CUDA GPU."""
    if not torch.cuda.is_available() or torch.cuda.device_count() != 1:
        return None  # one GPU: Triton launches on the current device, which is then every tensor's device
    try:
        return _build_kernel()
    except ImportError:
        return None


def _build_kernel():
    """Define the kernel (a Triton JIT function; under TRITON_INTERPRET=1, Triton's CPU interpreter runs it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def dequantize_nf4(codes, scales, inner_codes, inner_scales, offset, table, out, count,
                       BLOCK: tl.constexpr, INNER_BLOCK: tl.constexpr, NESTED: tl.constexpr, ROWS: tl.constexpr):
        # one instance: ROWS blocks of BLOCK values each, read as a (ROWS, BLOCK / 2) tile of bytes
        block = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        block_inside = block * BLOCK < count
        if NESTED:  # a block's scale = its 8-bit code's value x its group's float32 scale, + the mean offset
            inner = tl.load(scales + block, mask=block_inside, other=0).to(tl.int32)
            scale = tl.load(inner_codes + inner) * tl.load(inner_scales + block // INNER_BLOCK, mask=block_inside,
                                                           other=0.0)
            scale = scale + tl.load(offset)
        else:
            scale = tl.load(scales + block, mask=block_inside, other=0.0)
        byte_index = block[:, None] * (BLOCK // 2) + tl.arange(0, BLOCK // 2)[None, :]
        byte = tl.load(codes + byte_index, mask=byte_index < (count + 1) // 2, other=0).to(tl.int32)
        first = tl.load(table + (byte >> 4)) * scale[:, None]  # a byte's first value is its high half
        second = tl.load(table + (byte & 15)) * scale[:, None]
        index = block[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
        values = tl.reshape(tl.join(first, second), (ROWS, BLOCK))  # each byte's two values side by side
        tl.store(out + index, values.to(out.dtype.element_ty), mask=index < count)

    return dequantize_nf4


def dequantize(packed, state):
    """The dense weight (`state.shape`, `state.dtype`) of an NF4 weight, or None where this kernel can't serve.

    Example: `dequantize(layer.weight.data, layer.weight.quant_state)`  # a (4096, 4096) bfloat16 tensor

    Serves NF4 weights on a single CUDA GPU with Triton, with or without double quantisation; anything else
    (FP4 codes, a CPU, several GPUs, tensors in unusual layouts) gets None, so the caller falls back. If Triton
    cannot compile or run it here, a warning says so once and bitsandbytes de-quantises from then on.
    """
    kernel = _kernel() if packed.is_cuda and not _FAILURES else None
    if kernel is None:
        return None
    try:
        return _launch(kernel, packed, state)
    except Exception as error:  # noqa: BLE001  (training goes on with bitsandbytes' kernels, never stops here)
        _FAILURES.append(error)
        warnings.warn(f"ftlib's NF4 kernel could not run ({type(error).__name__}: {error}); bitsandbytes "
                      "de-quantises the 4-bit weights instead, which gives the same numbers", stacklevel=2)
        return None


def _launch(kernel, packed, state):
    """Run `kernel` on one weight: its dense form, or None for a weight it does not handle."""
    if (state.quant_type != "nf4" or not packed.is_contiguous() or not state.absmax.is_contiguous()
            or state.code.device != packed.device):
        return None
    scales = state.absmax
    if state.nested:
        inner = state.state2
        if not (torch.is_tensor(state.offset) and state.offset.dtype == inner.absmax.dtype == torch.float32
                and all(part.device == packed.device for part in (state.offset, inner.code, inner.absmax))):
            return None
        inner_codes, inner_scales, offset, inner_block = inner.code, inner.absmax, state.offset, inner.blocksize
    else:
        if scales.dtype != torch.float32:
            return None
        inner_codes = inner_scales = offset = scales  # not read
        inner_block = 1
    out = torch.empty(state.shape, dtype=state.dtype, device=packed.device)
    count = out.numel()
    rows = max(1, VALUES_PER_INSTANCE // state.blocksize)
    instances = (count + rows * state.blocksize - 1) // (rows * state.blocksize)
    arguments = (packed, scales, inner_codes, inner_scales, offset, state.code, out, count,
                 state.blocksize, inner_block, state.nested, rows)
    # Triton compiles a kernel per kind of arguments: dtypes, constants, and whether pointers and count are
    # multiples of 16. Where they are (always, for a model's weights), the compiled kernel is launched directly:
    # Triton's own launch works the kind out again each time, which costs the CPU more than the launch itself.
    kind = None
    if packed.is_cuda and count % 16 == 0 and count < 2**31 and all(part.data_ptr() % 16 == 0
                                                                   for part in arguments[:7]):
        kind = tuple(part.dtype for part in arguments[:7]) + (state.blocksize, inner_block, state.nested, rows)
    compiled = _COMPILED.get(kind)
    if compiled is not None:
        _run_compiled(compiled, instances, arguments)
        return out
    compiled = kernel[(instances,)](*arguments[:8], BLOCK=state.blocksize, INNER_BLOCK=inner_block,
                                    NESTED=state.nested, ROWS=rows, num_warps=WARPS_PER_INSTANCE,
                                    enable_fp_fusion=False)  # no fused multiply-adds
    if kind is not None and kind not in _COMPILED:
        _COMPILED[kind] = _launches_directly(compiled, instances, arguments)
    return out


def _run_compiled(compiled, instances, arguments):
    """Launch a kernel Triton compiled, on the current stream, the way Triton's own launch does at its end."""
    stream = torch._C._cuda_getCurrentRawStream(arguments[0].device.index)
    compiled.run(instances, 1, 1, stream, compiled.function, compiled.packed_metadata, None, None, None, *arguments)


def _launches_directly(compiled, instances, arguments):
    """`compiled` if launching it directly gives Triton's own result for these arguments, else None.

    Checked once per kind of weight, so a Triton whose compiled kernels take other arguments (this launch
    convention is Triton's internal one, not a public API) keeps Triton's own launch, and nothing else changes.
    """
    out = arguments[6]
    again = torch.empty_like(out)
    try:
        _run_compiled(compiled, instances, arguments[:6] + (again,) + arguments[7:])
    except Exception:  # noqa: BLE001  (another launch convention: Triton's own launch serves)
        return None
    return compiled if torch.equal(again, out) else None
