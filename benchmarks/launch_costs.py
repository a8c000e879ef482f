"""What one call of each building block of a training step costs the CPU, on a CUDA GPU.

A QLoRA step of an 8B model on a large GPU waits on Python: the GPU finishes each kernel before the CPU
has queued the next. This times the pieces ftlib chooses between, on tensors so small that the GPU's
share is negligible, so each figure is the CPU's cost of one call (microseconds). It also checks that the
faster piece gives the same numbers as the one it replaces.

    python3 benchmarks/launch_costs.py [--out costs.json]
"""

import argparse
import json
import time

import torch


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


def dequantisation(results):
    import bitsandbytes

    from ftlib import fused_lora

    weight = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    packed, state = bitsandbytes.functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    expected = bitsandbytes.functional.dequantize_4bit(packed, state)
    functions = fused_lora._native_dequantizers()
    results["native_dequantizers_found"] = functions is not None
    results["native_dequantize_equal"] = bool(torch.equal(fused_lora._dequantize_4bit(packed, state), expected))
    small_weight = torch.randn(64, 64, dtype=torch.bfloat16, device="cuda")
    small, small_state = bitsandbytes.functional.quantize_4bit(small_weight, quant_type="nf4", compress_statistics=True)
    results["us_dequantize_bitsandbytes_functional"] = per_call_microseconds(
        lambda: bitsandbytes.functional.dequantize_4bit(small, small_state))
    results["us_dequantize_native"] = per_call_microseconds(lambda: fused_lora._dequantize_4bit(small, small_state))
    saved = fused_lora._native_dequantizers
    fused_lora._native_dequantizers = lambda: None
    try:
        results["us_dequantize_operators"] = per_call_microseconds(
            lambda: fused_lora._dequantize_4bit(small, small_state))
    finally:
        fused_lora._native_dequantizers = saved


def norms(results):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from ftlib.acceleration import _fused_rms_norm_forward

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
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for part in (small_operations, dequantisation, norms):
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
