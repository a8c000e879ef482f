"""LoRA projections computed in one step: the frozen product and the adapter's update share one output.

PEFT computes a LoRA layer as `base(x).clone() + lora_B(lora_A(x)) * scale`: the base output is copied,
the adapter's output is written, scaled and added, each a full pass over a (tokens x width) tensor, and
the backward pass adds two input gradients the same way. Here the adapter's small product is written
first and the frozen layer's matrix multiply adds onto it as it writes its own result (`addmm_`), and the
same in the backward pass, so the extra passes disappear; for an 8B model at 4,096 tokens that is about
5 GB of memory traffic a layer. The math is the same: y = x W^T + scale * (x A^T) B^T, with the same
gradients.

Projections that read the same input (a layer's q, k and v; gate and up) are computed together, when the
block asks for the first of them: x meets their stacked adapters in one small multiply, and in the backward
pass their input gradients are summed by the multiplies themselves, where autograd would add them up in
passes of their own.

Under gradient checkpointing each layer runs again in the backward pass, and there only what the gradients
read is needed. In Llama-style layers nothing reads the MLP's last projection's output then (it is only added
to the residual stream), so its frozen multiply is left out of the recomputation: a quarter of the layer's
weights, with the same gradients (`UNREAD_WHEN_RECOMPUTED`).

The Python around each projection is kept lean, because on a large GPU an 8B step waits on it: the 4-bit
weights are de-quantised in one kernel launch (`nf4_kernel.py`) or through bitsandbytes' C functions, the
backward pass reuses the block scales where the forward pass worked them out separately, and the adapters'
gradients come out of the multiply in their own dtype (float32) instead of being cast afterwards.

Only the training path changes: generation (a model in eval mode, without gradients) keeps PEFT's own
forward, which uses bitsandbytes' fast single-token kernel. Layers with dropout, DoRA or other LoRA
variants, several active adapters or a merged adapter also keep PEFT's forward.

The switches `siblings`, `unread_outputs`, `nf4_kernel` and `direct_dequant` (ftlib/speed/switches.py) are
read each time `fuse_lora_layers` runs, so the per-projection path asks nothing.
"""

import functools
import types

import torch

from ftlib.speed import nf4_kernel, switches
from ftlib.speed.offloaded_checkpoint import recomputing


class _Dequantizers:
    """Which ways of making a 4-bit weight dense the fused path may take, as the switches said at the last fuse."""

    nf4_kernel = True  # ftlib's one-pass kernel (nf4_kernel.py)
    direct = True  # bitsandbytes' C functions, called directly on one CUDA GPU

    @classmethod
    def read_switches(cls):
        cls.nf4_kernel, cls.direct = switches.on("nf4_kernel"), switches.on("direct_dequant")


@functools.cache
def _native_dequantizers():
    """bitsandbytes' CUDA de-quantisers as C functions, or None where they cannot be called directly.

    A dict: "scales" (8-bit block scales to float32) and (dtype, "nf4" / "fp4") for the 4-bit weights.
    Only on a single-GPU machine (the current device is then every tensor's device), and only when
    bitsandbytes declares the functions' argument types (code, input, absmax, out, blocksize, n, stream).
    """
    if not torch.cuda.is_available() or torch.cuda.device_count() != 1:
        return None
    try:
        import bitsandbytes.backends.cuda.ops  # noqa: F401  (declares the argument types)
        from bitsandbytes.cextension import lib

        functions = {"scales": lib.cdequantize_blockwise_fp32}
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
            for quant_type in ("nf4", "fp4"):
                functions[dtype, quant_type] = getattr(lib, f"cdequantize_blockwise_{name}_{quant_type}")
    except Exception:  # noqa: BLE001  (another bitsandbytes layout: its operators below serve instead)
        return None
    if any(len(getattr(function, "argtypes", None) or ()) != 7 for function in functions.values()):
        return None
    return functions


def _native_path(packed, state):
    """bitsandbytes' C functions when they can de-quantise this weight directly, else None."""
    functions = _native_dequantizers() if packed.is_cuda and _Dequantizers.direct else None
    if (functions is None or not packed.is_contiguous() or not state.absmax.is_contiguous()
            or (state.nested and (state.state2.dtype != torch.float32 or not state.state2.code.is_cuda))):
        return None
    return functions


def _block_scales(state, functions):
    """The float32 scale of each block of a 4-bit weight (themselves 8-bit under double quantisation).

    `functions`: `_native_path`'s answer for the weight (None: bitsandbytes' operators).
    """
    absmax = state.absmax
    if not state.nested:
        return absmax
    inner = state.state2
    if functions is not None:
        scales = torch.empty(absmax.shape, dtype=torch.float32, device=absmax.device)
        functions["scales"](inner.code.data_ptr(), absmax.data_ptr(), inner.absmax.data_ptr(), scales.data_ptr(),
                            inner.blocksize, absmax.numel(), torch._C._cuda_getCurrentRawStream(absmax.device.index))
    else:
        code = inner.code if inner.code.device == absmax.device else inner.code.to(absmax.device)
        scales = torch.ops.bitsandbytes.dequantize_blockwise.default(absmax, inner.absmax, code, inner.blocksize,
                                                                     inner.dtype)
    scales += state.offset
    return scales if scales.dtype == torch.float32 else scales.float()


def _dequantize_4bit(packed, state, scales=None):
    """A 4-bit weight in `state.dtype`, as bitsandbytes' `functional.dequantize_4bit` gives it, and its block scales.

    This runs three times per projection per micro-batch (32 layers x 7 projections x 3 x 4 micro-batches =
    2,688 times per 8B step), so its GPU time and the Python around it both show. ftlib's one-pass NF4 kernel
    serves where it can (`nf4_kernel.py`; the scales returned are then None); otherwise, on one CUDA GPU,
    bitsandbytes' C functions are called directly, and elsewhere its operators, with the same arguments
    (`_Dequantizers` says which of these the switches allow). `scales`: the ones a previous call returned for
    this weight, so they are not de-quantised again.
    """
    if _Dequantizers.nf4_kernel:
        dense = nf4_kernel.dequantize(packed, state)
        if dense is not None:
            return dense, None
    functions = _native_path(packed, state)
    if scales is None:
        scales = _block_scales(state, functions)
    if functions is None:
        return torch.ops.bitsandbytes.dequantize_4bit.default(packed, scales, state.blocksize, state.quant_type,
                                                              state.shape, state.dtype), scales
    dense = torch.empty(state.shape, dtype=state.dtype, device=packed.device)
    functions[state.dtype, state.quant_type](None, packed.data_ptr(), scales.data_ptr(), dense.data_ptr(),
                                             state.blocksize, dense.numel(),
                                             torch._C._cuda_getCurrentRawStream(packed.device.index))
    return dense, scales


def _dense_weight(base_layer, dtype, scales=None):
    """The frozen weight as a (out, in) matrix in `dtype`, and its block scales (None unless 4-bit and needed).

    `scales`: the ones a previous call returned for this weight, so they are not de-quantised again.
    """
    weight = base_layer.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None:
        return weight.to(dtype), None
    dense, scales = _dequantize_4bit(weight.data, quant_state, scales)
    return dense.to(dtype), scales


@functools.cache
def _float32_products(device_index, dtype):
    """True when this GPU's matrix multiply writes products of two `dtype` matrices straight to float32."""
    try:
        a = torch.ones(2, 2, dtype=dtype, device=f"cuda:{device_index}")
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError):
        return False


def _product(a, b, dtype):
    """a @ b in `dtype`: a float32 adapter's gradient comes out of the multiply, without a cast after it."""
    if dtype != a.dtype and dtype == torch.float32 and a.is_cuda and _float32_products(a.device.index, a.dtype):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)


class _LoraProjections(torch.autograd.Function):
    """y_i = x W_i^T (+ bias_i) + scale_i * (x A_i^T) B_i^T for one or more projections of the same input x.

    W_i frozen (possibly 4-bit), A_i and B_i trained. Siblings (a layer's q, k and v, or gate and up) come in
    one call: their A_i are stacked so x meets them in one small multiply, and the backward pass collects
    every input gradient in one tensor. Each adapter's product is written first and the large multiply adds
    onto it as it writes its result (`addmm_` with beta = scale), so no pass re-reads the output only to add
    the update.

    Everything runs in `dtype` (the autocast dtype while training in mixed precision); the inputs are
    already in it or cast once, so autocast has nothing left to do. Kept lean: on a large GPU the
    Python work per projection, not the arithmetic, is what a training step waits for. The backward pass
    reuses the forward pass's block scales (a few MB a layer) instead of de-quantising them again.
    `layers`: a (base layer, scale) pair per projection; `adapters`: A_1, B_1, A_2, B_2, ...
    `outputs_read`: False while checkpointing recomputes a layer whose outputs only carry gradients back (the
    MLP's last projection, see `UNREAD_WHEN_RECOMPUTED`): then only the small product x A^T is computed, which
    is all the backward pass needs, and the outputs are left unwritten.
    """

    @staticmethod
    def forward(ctx, x, layers, dtype, outputs_read, *adapters):
        flat = x.reshape(-1, x.shape[-1])
        if flat.dtype != dtype:
            flat = flat.to(dtype)
        down_weights, up_weights = adapters[0::2], [up.to(dtype) for up in adapters[1::2]]
        down_weight = (down_weights[0] if len(layers) == 1 else torch.cat(down_weights)).to(dtype)
        down = torch.mm(flat, down_weight.t())  # (tokens, sum of ranks): small
        ranks = [up_weight.shape[1] for up_weight in up_weights]
        outputs, block_scales = [], []
        for (base_layer, scale), up_weight, part in zip(layers, up_weights, down.split(ranks, 1)):
            if not outputs_read:  # only gradients pass through these outputs: the backward pass needs `down` alone
                outputs.append(flat.new_empty(flat.shape[0], up_weight.shape[0]).view(*x.shape[:-1], -1))
                block_scales.append(None)
                continue
            weight, scales = _dense_weight(base_layer, dtype)
            bias = base_layer.bias
            if bias is None:
                out = torch.mm(part, up_weight.t())
                out.addmm_(flat, weight.t(), beta=scale)
            else:
                out = torch.addmm(bias.to(dtype), part, up_weight.t(), alpha=scale)
                out.addmm_(flat, weight.t())
            del weight  # one dense weight at a time: freed before the next sibling's is made
            outputs.append(out.view(*x.shape[:-1], out.shape[-1]))
            block_scales.append(scales)
        ctx.save_for_backward(flat, down, down_weight, *up_weights, *block_scales)
        ctx.layers, ctx.ranks, ctx.input_shape, ctx.adapter_dtype = layers, ranks, x.shape, adapters[0].dtype
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        flat, down, down_weight, *rest = ctx.saved_tensors
        layers, adapter_dtype, count = ctx.layers, ctx.adapter_dtype, len(ctx.layers)
        up_weights, block_scales = rest[:count], rest[count:]
        grads = [grad.reshape(-1, grad.shape[-1]).to(flat.dtype) for grad in grad_outputs]
        adapter_grads, grad_downs = [], []
        for index, (grad, up_weight, part, (_, scale)) in enumerate(
                zip(grads, up_weights, down.split(ctx.ranks, 1), layers)):
            grad_down = torch.mm(grad, up_weight)  # (tokens, r)
            if scale != 1.0:
                grad_down.mul_(scale)
            grad_downs.append(grad_down)
            grad_up_weight = None
            if ctx.needs_input_grad[5 + 2 * index]:
                grad_up_weight = _product(grad.t(), part, adapter_dtype)
                if scale != 1.0:
                    grad_up_weight.mul_(scale)
            adapter_grads += [None, grad_up_weight]
        grad_down = grad_downs[0] if count == 1 else torch.cat(grad_downs, 1)  # (tokens, sum of ranks)
        if any(ctx.needs_input_grad[4::2]):
            parts = _product(grad_down.t(), flat, adapter_dtype).split(ctx.ranks)  # each A's gradient
            for index, part in enumerate(parts):
                if ctx.needs_input_grad[4 + 2 * index]:
                    adapter_grads[2 * index] = part
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_down, down_weight)
            for grad, (base_layer, _), scales in zip(grads, layers, block_scales):
                grad_x.addmm_(grad, _dense_weight(base_layer, flat.dtype, scales)[0])
            grad_x = grad_x.view(ctx.input_shape)
        # where the product could not be float32, autograd casts the adapter gradients to the adapters' dtype
        return grad_x, None, None, None, *adapter_grads


# Decoder layers whose MLP output is only added to the residual stream: while checkpointing recomputes such a
# layer for the backward pass, nothing reads mlp.down_proj's output (the addition keeps no inputs for its
# gradient), so its frozen multiply, a quarter of the layer's, is left out then. Not Gemma 2 or 3, whose norm
# after the MLP reads that output, nor layers not listed here.
UNREAD_WHEN_RECOMPUTED = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer",
                          "GemmaDecoderLayer"}

# Projections that read the same input in the architectures ftlib loads (Llama, Mistral, Qwen, Gemma, ...):
# fused siblings are computed in one call when the block asks for the first of them.
SIBLING_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Siblings:
    """The fused projections of one block that read the same input, and the outputs not yet asked for.

    The block calls them one by one with the same tensor: the first call computes all of them and keeps the
    others' outputs until their own calls. If a projection whose output waits is called with another tensor,
    the block feeds them different inputs: what waits is dropped, and from then on each projection is
    computed on its own.
    """

    def __init__(self, members):
        self.members, self.grouped = members, True
        self.input, self.waiting = None, {}

    def take(self, module, x):
        """The output kept for `module` if a sibling already computed it from this very `x`, else None."""
        if module not in self.waiting:
            return None
        if self.input is x:
            output = self.waiting.pop(module)
            if not self.waiting:
                self.input = None
            return output
        self.grouped, self.input, self.waiting = False, None, {}
        return None

    def keep(self, x, outputs, caller):
        """Keep the outputs computed from `x` for every member but `caller`, and return the caller's."""
        self.input = x
        self.waiting = {member: output for member, output in zip(self.members, outputs) if member is not caller}
        return outputs[self.members.index(caller)]


def _plain_adapter(module):
    """The one active adapter of a LoRA layer when it is plain LoRA and fused training applies, else None."""
    if len(module.active_adapters) != 1 or module.disable_adapters or module.merged:
        return None
    adapter = module.active_adapters[0]
    plain = (
        adapter in module.lora_A
        and adapter not in getattr(module, "lora_variant", {})
        and isinstance(module.lora_dropout[adapter], torch.nn.Identity)
        and module.lora_B[adapter].bias is None
    )
    return adapter if plain else None


def _fused_forward(self, x, *args, **kwargs):
    """PEFT's LoRA forward, taking the fused path when only plain LoRA is active and the model trains."""
    siblings = self._ftlib_siblings
    if siblings is not None and not args and not kwargs:
        output = siblings.take(self, x)
        if output is not None:
            return output
    adapter = _plain_adapter(self)
    training = self.training or torch.is_grad_enabled()  # reentrant checkpointing's first pass has no gradients
    if args or kwargs or adapter is None or not training:
        return self._ftlib_peft_forward(x, *args, **kwargs)
    members = [self]
    if siblings is not None and siblings.grouped:
        if all(member is self or _plain_adapter(member) == adapter for member in siblings.members):
            members = siblings.members
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    else:
        dtype = x.dtype
    layers = tuple((member.get_base_layer(), float(member.scaling[adapter])) for member in members)
    adapters = [weight for member in members
                for weight in (member.lora_A[adapter].weight, member.lora_B[adapter].weight)]
    outputs_read = not (self._ftlib_unread_when_recomputed and recomputing())
    outputs = _LoraProjections.apply(x, layers, dtype, outputs_read, *adapters)
    return outputs[0] if len(members) == 1 else siblings.keep(x, outputs, self)


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

    Safe to call again (layers already fused are skipped, and every fused layer follows the switches as they
    are now) and on any device; `unfuse_lora_layers` undoes it.
    """
    _Dequantizers.read_switches()
    together, leave_out = switches.on("siblings"), switches.on("unread_outputs")
    count = 0
    for module in model.modules():
        if getattr(module, "_ftlib_peft_forward", None) is None and _fusable(module):
            module._ftlib_peft_forward, module._ftlib_siblings = module.forward, None
            module._ftlib_unread_when_recomputed = False
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    for block in model.modules():
        if type(block).__name__ in UNREAD_WHEN_RECOMPUTED:
            down = getattr(getattr(block, "mlp", None), "down_proj", None)
            if hasattr(down, "_ftlib_unread_when_recomputed"):
                down._ftlib_unread_when_recomputed = leave_out
        for names in SIBLING_NAMES:
            members = [getattr(block, name, None) for name in names]
            members = [member for member in members if hasattr(member, "_ftlib_siblings")]  # fused ones only
            if len(members) > 1:
                siblings = _Siblings(members) if together else None
                for member in members:
                    member._ftlib_siblings = siblings
    return count


def unfuse_lora_layers(model):
    """Put PEFT's own forward back on every fused layer; returns how many. Example: `unfuse_lora_layers(model)`."""
    count = 0
    for module in model.modules():
        if getattr(module, "_ftlib_peft_forward", None) is not None:
            del module.forward  # the instance attribute; the class's forward shows through again
            del module._ftlib_peft_forward, module._ftlib_siblings, module._ftlib_unread_when_recomputed
            count += 1
    return count
