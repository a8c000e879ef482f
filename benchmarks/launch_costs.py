"""What one call of each building block of a training step costs the CPU, on a CUDA GPU.

A QLoRA step of an 8B model on a large GPU waits on Python: the GPU finishes each kernel before the CPU
has queued the next. This times the pieces ftlib chooses between, on tensors so small that the GPU's
share is negligible, so each figure is the CPU's cost of one call (microseconds). It also checks that the
faster piece gives the same numbers as the one it replaces, and times the de-quantisers and a LoRA
projection's products on the GPU alone (replayed from a CUDA graph, so without the CPU's part) for the 8B
model's weight shapes.

    python3 benchmarks/launch_costs.py [--out costs.json]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ftlib from this checkout


def per_call_microseconds(function, repeats=2000):
    """Wall time per call of `function()` after a warm-up, with the GPU drained before and after."""
    for _ in range(50):
        function()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return round((time.perf_counter() - started) / repeats * 1e6, 1)


def gpu_microseconds(function, repeats=50):
    """GPU time per call of `function()`: its kernels captured once in a CUDA graph and replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles) outside the capture
        function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            function()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / (5 * repeats) * 1000, 1)


def _quantized(shape):
    import bitsandbytes

    weight = torch.randn(*shape, dtype=torch.bfloat16, device="cuda")
    return bitsandbytes.functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)


class _TritonLaunchOnly(dict):
    """A stand-in for `nf4_kernel._COMPILED` that never launches a compiled kernel directly."""

    def get(self, key, default=None):
        return None

    def __contains__(self, key):
        return True


def _switched_off(names, function):
    """`function()` with ftlib's speed options `names` switched off, through FTLIB_SPEED_OFF as a user would.

    The fused path reads its de-quantisers from the switches when layers are fused; here they are read directly.
    """
    from ftlib.speed.fused_lora import _Dequantizers
    from ftlib.speed.switches import OFF_VARIABLE

    before = os.environ.get(OFF_VARIABLE)
    os.environ[OFF_VARIABLE] = ",".join(names)
    _Dequantizers.read_switches()
    try:
        return function()
    finally:
        if before is None:
            del os.environ[OFF_VARIABLE]
        else:
            os.environ[OFF_VARIABLE] = before
        _Dequantizers.read_switches()


def _without_kernel(function):
    """`function()` with ftlib's NF4 kernel switched off (bitsandbytes' C functions de-quantise)."""
    return _switched_off(["nf4_kernel"], function)


def dequantisation(results):
    import bitsandbytes

    from ftlib.speed import fused_lora, nf4_kernel

    packed, state = _quantized((4096, 4096))
    expected = bitsandbytes.functional.dequantize_4bit(packed, state)
    results["nf4_kernel_found"] = nf4_kernel._kernel() is not None
    results["nf4_kernel_equal"] = bool(torch.equal(nf4_kernel.dequantize(packed, state), expected))
    results["native_dequantizers_found"] = fused_lora._native_dequantizers() is not None
    results["native_dequantize_equal"] = bool(torch.equal(
        _without_kernel(lambda: fused_lora._dequantize_4bit(packed, state)[0]), expected))
    small, small_state = _quantized((64, 64))
    results["us_dequantize_bitsandbytes_functional"] = per_call_microseconds(
        lambda: bitsandbytes.functional.dequantize_4bit(small, small_state))
    results["us_dequantize_nf4_kernel"] = per_call_microseconds(lambda: fused_lora._dequantize_4bit(small, small_state))
    saved = nf4_kernel._COMPILED
    nf4_kernel._COMPILED = _TritonLaunchOnly()
    try:
        results["us_dequantize_nf4_kernel_tritons_launch"] = per_call_microseconds(
            lambda: fused_lora._dequantize_4bit(small, small_state))
    finally:
        nf4_kernel._COMPILED = saved
    results["us_dequantize_native"] = _without_kernel(
        lambda: per_call_microseconds(lambda: fused_lora._dequantize_4bit(small, small_state)))
    results["us_dequantize_operators"] = _switched_off(  # neither ftlib's kernel nor the C functions: the operators
        ["nf4_kernel", "direct_dequant"],
        lambda: per_call_microseconds(lambda: fused_lora._dequantize_4bit(small, small_state)))
    for shape in ((4096, 4096), (1024, 4096), (14336, 4096)):  # the 8B model's q/o, k/v and MLP weights
        packed, state = _quantized(shape)
        name = "x".join(map(str, shape))
        results[f"gpu_us_dequantize_{name}_nf4_kernel"] = gpu_microseconds(
            lambda: fused_lora._dequantize_4bit(packed, state))
        results[f"gpu_us_dequantize_{name}_bitsandbytes"] = _without_kernel(
            lambda: gpu_microseconds(lambda: fused_lora._dequantize_4bit(packed, state)))


def lora_products(results):
    """GPU time of a LoRA projection's products at 4,096 tokens for the 8B model's shapes (r = 16): the frozen
    multiply alone, the adapter's update added in a second pass over its output, and the update written first
    with the frozen multiply adding onto it as it writes (beta = 1), as ftlib does."""
    tokens, rank = 4096, 16
    for out_features, in_features in ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)):
        x = torch.randn(tokens, in_features, dtype=torch.bfloat16, device="cuda")
        weight = torch.randn(out_features, in_features, dtype=torch.bfloat16, device="cuda")
        down = torch.randn(tokens, rank, dtype=torch.bfloat16, device="cuda")
        up = torch.randn(out_features, rank, dtype=torch.bfloat16, device="cuda")
        results[f"gpu_us_lora_{out_features}x{in_features}"] = {
            "multiply_alone": gpu_microseconds(lambda: torch.mm(x, weight.t())),
            "update_in_a_second_pass": gpu_microseconds(lambda: torch.mm(x, weight.t()).addmm_(down, up.t())),
            "update_written_first": gpu_microseconds(lambda: torch.mm(down, up.t()).addmm_(x, weight.t())),
        }


def norms(results):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from ftlib.speed.acceleration import _fused_rms_norm_forward

    reference = LlamaRMSNorm(4096, eps=1e-5).to("cuda", torch.bfloat16)
    torch.nn.init.normal_(reference.weight, 1.0, 0.1)
    hidden = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        plain, fused = reference(hidden), _fused_rms_norm_forward(reference, hidden)
        results["torch_rms_norm_dtype_under_autocast"] = str(torch.nn.functional.rms_norm(
            hidden, (4096,), reference.weight, 1e-5).dtype)
    results["torch_rms_norm_dtype"] = str(fused.dtype)
    results["torch_rms_norm_max_difference"] = float((plain.float() - fused.float()).abs().max())
    results["torch_rms_norm_max_magnitude"] = float(plain.float().abs().max())
    small = torch.randn(8, 4096, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm

        liger = LigerRMSNorm(4096, eps=1e-5).to("cuda", torch.bfloat16)
        results["us_rms_norm_liger_forward_backward"] = per_call_microseconds(lambda: liger(small).sum().backward())
        with torch.no_grad():
            results["us_rms_norm_liger_forward"] = per_call_microseconds(lambda: liger(small))
    except ImportError:
        pass
    results["us_rms_norm_torch_forward_backward"] = per_call_microseconds(
        lambda: _fused_rms_norm_forward(reference, small).sum().backward())
    results["us_rms_norm_llama_forward_backward"] = per_call_microseconds(lambda: reference(small).sum().backward())
    with torch.no_grad():
        results["us_rms_norm_torch_forward"] = per_call_microseconds(lambda: _fused_rms_norm_forward(reference, small))
    results["us_sum_backward_alone"] = per_call_microseconds(lambda: (small * 1).sum().backward())


def small_operations(results):
    a = torch.randn(8, 64, device="cuda")
    b = torch.randn(64, 64, device="cuda")
    results["us_mm"] = per_call_microseconds(lambda: torch.mm(a, b))
    results["us_cast_to_bfloat16"] = per_call_microseconds(lambda: a.to(torch.bfloat16))
    results["us_add_inplace"] = per_call_microseconds(lambda: a.add_(1.0))
    results["us_empty"] = per_call_microseconds(lambda: torch.empty(64, 64, device="cuda"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    arguments = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "gpu": torch.cuda.get_device_name(0),
               "torch": torch.__version__}
    for part in (small_operations, dequantisation, lora_products, norms):
        try:
            part(results)
        except Exception as error:  # noqa: BLE001  (report what failed and go on with the other parts)
            results[f"{part.__name__}_error"] = f"{type(error).__name__}: {error}"
    text = json.dumps(results, indent=1)
    print(text)
    if arguments.out:
        with open(arguments.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
