"""LoRA projections computed in one step: the frozen product and the adapter's update share one output.

PEFT computes a LoRA layer as `base(x).clone() + lora_B(lora_A(x)) * scale`: the base output is copied,
the adapter's output is written, scaled and added, each a full pass over a (tokens x width) tensor, and
the backward pass adds two input gradients the same way. Here the adapter's product is accumulated
straight into the base output by the matrix multiply (`addmm_`), and the same in the backward pass, so
the extra passes disappear; for an 8B model at 4,096 tokens that is about 5 GB of memory traffic a layer.
The math is the same: y = x W^T + scale * (x A^T) B^T, with the same gradients.

Only the training path changes: generation (a model in eval mode, without gradients) keeps PEFT's own
forward, which uses bitsandbytes' fast single-token kernel. Layers with dropout, DoRA or other LoRA
variants, several active adapters or a merged adapter also keep PEFT's forward.
"""

import types

import torch


def _dequantize_4bit(packed, state):
    """bitsandbytes' `functional.dequantize_4bit(packed, state)`, calling its two operators directly.

    The same operators and arguments, without the checks and wrappers around them (this runs three times per
    projection per micro-batch, 2,688 times per 8B step, so the Python around it shows in a CPU-bound step).
    """
    absmax = state.absmax
    if state.nested:  # double quantisation: the block scales are themselves 8-bit, with their own scales
        inner = state.state2
        code = inner.code if inner.code.device == absmax.device else inner.code.to(absmax.device)
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(absmax, inner.absmax, code, inner.blocksize,
                                                                     inner.dtype)
        absmax += state.offset
        if absmax.dtype != torch.float32:
            absmax = absmax.float()
    return torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax, state.blocksize, state.quant_type,
                                                          state.shape, state.dtype)


def _dense_weight(base_layer, dtype):
    """The frozen weight as a (out, in) matrix in `dtype`, de-quantising a 4-bit one."""
    weight = base_layer.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        return _dequantize_4bit(weight.data, quant_state).to(dtype)
    return weight.to(dtype)


class _LoraProjection(torch.autograd.Function):
    """y = x W^T (+ bias) + scale * (x A^T) B^T, with W frozen (possibly 4-bit) and A, B trained.

    Everything runs in `dtype` (the autocast dtype while training in mixed precision); the inputs are
    already in it or cast once, so autocast has nothing left to do. Kept lean: on a large GPU the
    Python work per projection, not the arithmetic, is what a training step waits for.
    """

    @staticmethod
    def forward(ctx, x, lora_A, lora_B, scale, base_layer, dtype):
        flat = x.reshape(-1, x.shape[-1])
        if flat.dtype != dtype:
            flat = flat.to(dtype)
        down_weight, up_weight = lora_A.to(dtype), lora_B.to(dtype)
        weight = _dense_weight(base_layer, dtype)
        bias = base_layer.bias
        out = torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias.to(dtype), flat, weight.t())
        down = torch.mm(flat, down_weight.t())  # (tokens, r): small
        out.addmm_(down, up_weight.t(), alpha=scale)
        ctx.save_for_backward(flat, down, down_weight, up_weight)
        ctx.base_layer, ctx.scale, ctx.input_shape = base_layer, scale, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_output):
        flat, down, down_weight, up_weight = ctx.saved_tensors
        scale = ctx.scale
        grad = grad_output.reshape(-1, grad_output.shape[-1]).to(flat.dtype)
        grad_down = torch.mm(grad, up_weight).mul_(scale)  # (tokens, r)
        grad_up_weight = torch.mm(grad.t(), down).mul_(scale) if ctx.needs_input_grad[2] else None
        grad_down_weight = torch.mm(grad_down.t(), flat) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad, _dense_weight(ctx.base_layer, flat.dtype))
            grad_x.addmm_(grad_down, down_weight)
            grad_x = grad_x.view(ctx.input_shape)
        # autograd casts the adapter gradients to the adapters' own dtype (float32 under mixed precision)
        return grad_x, grad_down_weight, grad_up_weight, None, None, None


def _fused_forward(self, x, *args, **kwargs):
    """PEFT's LoRA forward, taking the fused path when only plain LoRA is active and the model trains."""
    adapter = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    plain_lora = (
        adapter is not None
        and adapter in self.lora_A
        and adapter not in getattr(self, "lora_variant", {})
        and isinstance(self.lora_dropout[adapter], torch.nn.Identity)
        and self.lora_B[adapter].bias is None
    )
    training = self.training or torch.is_grad_enabled()  # reentrant checkpointing's first pass has no gradients
    if args or kwargs or not plain_lora or self.disable_adapters or self.merged or not training:
        return self._ftlib_peft_forward(x, *args, **kwargs)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:
        dtype = x.dtype
    return _LoraProjection.apply(x, self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                                 float(self.scaling[adapter]), self.get_base_layer(), dtype)


def _fusable(module):
    """True for a PEFT LoRA layer over a plain or 4-bit linear layer (the two kinds fused here)."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer) or not hasattr(module, "get_base_layer"):
        return False
    base = module.get_base_layer()
    if type(base) is torch.nn.Linear:
        return True
    return type(base).__name__ == "Linear4bit" and getattr(base.weight, "quant_state", None) is not None


def fuse_lora_layers(model):
    """Give every LoRA projection of `model` the fused training path; returns how many layers changed.

    Example: `fuse_lora_layers(model)  # 224 for an 8B Llama with all seven projections`

    Safe to call again (layers already fused are skipped) and on any device; `unfuse_lora_layers` undoes it.
    """
    count = 0
    for module in model.modules():
        if getattr(module, "_ftlib_peft_forward", None) is None and _fusable(module):
            module._ftlib_peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count


def unfuse_lora_layers(model):
    """Put PEFT's own forward back on every fused layer; returns how many. Example: `unfuse_lora_layers(model)`."""
    count = 0
    for module in model.modules():
        if getattr(module, "_ftlib_peft_forward", None) is not None:
            del module.forward  # the instance attribute; the class's forward shows through again
            del module._ftlib_peft_forward
            count += 1
    return count
