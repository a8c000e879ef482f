"""Gradient checkpointing whose saved layer inputs wait in CPU memory: the "offload" mode on a CUDA GPU.

Checkpointing keeps one tensor per decoder layer through the forward pass, the layer's input, and
recomputes the rest in the backward pass. For an 8B model at 2 x 2,048 tokens those inputs take 32 x
33.5 MB = 1.07 GB of GPU memory. Here each one is copied to pinned (page-locked) CPU memory as the layer
runs, and copied back one layer ahead of its recomputation (a long sequence's inputs, which would crowd the
GPU, come back only when their layer needs them). Both copies run on a side stream beside the layers' kernels,
and neither makes the CPU wait.

PyTorch's own tools for this (`torch.autograd.graph.save_on_cpu`, TRL's activation offloading) hook
every saved tensor, and `save_on_cpu` copies to the CPU synchronously; a layer-level autograd function
is one copy each way and no hooks. The recomputation sees what the first pass saw: the same autocast
settings and the same random-number state (so dropout draws the same mask). Like PyTorch's reentrant
checkpoint, it supports `loss.backward()` only (not `torch.autograd.grad`), and each layer is recomputed once.

Pinned memory cannot be swapped out, and long sequences need a lot of it (8B at 32k tokens: 8.6 GB, more
than a free Colab machine has). So layer inputs go to the CPU only while they fit in half of the CPU
memory that was available at the first one; the rest stay on the GPU, with one warning. The limit is taken
once: PyTorch keeps freed pinned memory for reuse, so later readings would count ftlib's own parking space
as used.
"""

import threading
import warnings
import weakref

import torch
from torch.utils.checkpoint import checkpoint

from ftlib.errors import FtlibError
from ftlib.speed import switches

CPU_MEMORY_SHARE = 0.5  # 0.3-0.7: the share of available CPU memory that parked layer inputs may take
# 0.005-0.05: the largest layer input copied back a layer early, as a share of the GPU memory the process may use.
# The early copy needs a second buffer the size of the input; a larger input (a long sequence, where memory is
# what limits training) comes back when its layer needs it. 1% keeps it on for an 8B model at 2 x 2,048 tokens
# on a 15 GB GPU (32 MB a buffer) and off for one long sequence at the edge of that GPU's memory.
EARLY_COPY_SHARE = 0.01
_COPY_STREAMS = {}  # one side stream per GPU for the copies to the CPU
_RECOMPUTING = threading.local()  # .active: a checkpointed layer is being recomputed in this thread


def recomputing():
    """True while a layer checkpointed by ftlib is recomputed for the backward pass (in the calling thread).

    Example: `if recomputing(): ...  # only what the backward pass reads is needed now`

    A recomputed layer's outputs serve only to carry gradients back, so work whose result nothing but those
    outputs reads can be left out then (`fused_lora.py` does that for the MLP's last projection).
    """
    return getattr(_RECOMPUTING, "active", False)


def _marking_recomputation(run):
    """`run`, which `recomputing()` reports while it runs with gradients on: under reentrant or offloaded
    checkpointing that is the recomputation, since the first pass runs with gradients off."""

    def marked(*args, **keywords):
        if not torch.is_grad_enabled():
            return run(*args, **keywords)
        before, _RECOMPUTING.active = recomputing(), True
        try:
            return run(*args, **keywords)
        finally:
            _RECOMPUTING.active = before

    return marked


class _Parking:
    """Bytes of layer inputs waiting in CPU memory now, and how many may."""

    parked = 0
    allowed = None  # None: no limit known
    measured = False
    warned = False


def _available_cpu_memory():
    """Bytes of CPU memory the system could give now (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _room_in_cpu_memory(size):
    """True when `size` more bytes of layer inputs may be parked in CPU memory."""
    if not _Parking.measured:
        available = _available_cpu_memory()
        _Parking.allowed = None if available is None else CPU_MEMORY_SHARE * available
        _Parking.measured = True
    if _Parking.allowed is None or _Parking.parked + size <= _Parking.allowed:
        return True
    if not _Parking.warned:
        _Parking.warned = True
        warnings.warn(f"CPU memory is short: {_Parking.allowed / 2**30:.1f} GB may hold offloaded layer inputs, so "
                      "the rest stay on the GPU. Training goes on; a shorter max_seq_length or a machine with "
                      "more memory would offload them all.", stacklevel=3)
    return False


def _park(tensor):
    """Count `tensor` as parked until it is freed."""
    _Parking.parked += tensor.nbytes
    weakref.finalize(tensor, _unpark, tensor.nbytes)


def _unpark(size):
    _Parking.parked -= size


def _gpu_memory_allowed(device):
    """Bytes of GPU memory this process may use on `device` (PyTorch's per-process fraction of the total, where
    this PyTorch can tell it); None on a CPU."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda index: 1.0)(index)
    return torch.cuda.get_device_properties(index).total_memory * fraction


def _copy_stream(device):
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


class _ReturnBuffers:
    """Two buffers per device that take turns holding layer inputs copied back a layer early.

    Fixed buffers rather than fresh memory each time: memory written on the copy stream and read on the
    compute stream waits in PyTorch's allocator until both are done with it, and as the CPU queues work
    many layers ahead of the GPU, a dozen such blocks would pile up (0.2 GB for an 8B model). Each buffer
    remembers whose input it holds; an input whose buffer was handed on since comes from its CPU copy.
    """

    _by_device = {}

    def __init__(self, device):
        self.device, self.tensors, self.holders = device, [], [None, None]

    @classmethod
    def on(cls, device):
        if device not in cls._by_device:
            cls._by_device[device] = cls(device)
        return cls._by_device[device]

    def claim(self, parked, in_use):
        """The index of a buffer for `parked`'s input, other than `in_use` (the index the caller reads)."""
        shape, dtype = parked.cpu.shape, parked.cpu.dtype
        if not self.tensors or self.tensors[0].shape != shape or self.tensors[0].dtype != dtype:
            self.forget([torch.empty(shape, dtype=dtype, device=self.device) for _ in range(2)])
            if self.device.type == "cuda":
                for tensor in self.tensors:  # when a new shape replaces them, pending copies into them finish first
                    tensor.record_stream(_copy_stream(self.device))
        index = 1 if in_use == 0 else 0
        self.holders[index] = weakref.ref(parked)
        return index

    def forget(self, tensors=()):
        """Hold nothing: new buffers `tensors`, or none (PyTorch gets the memory back once no one reads it)."""
        self.tensors, self.holders = list(tensors), [None, None]

    def holds(self, index, parked):
        holder = self.holders[index] if index is not None and self.tensors else None
        return holder is not None and holder() is parked


def release_return_buffers():
    """Hand the return buffers back to PyTorch (train calls it when training ends); inputs not yet taken
    back come from their CPU copies. Example: `release_return_buffers()`"""
    for buffers in _ReturnBuffers._by_device.values():
        buffers.forget()


class _ParkedInput:
    """One layer's input in CPU memory, and its way back: copied back a layer early, or when needed.

    The backward pass meets the layers in reverse order, so while layer k is recomputed the input of layer
    k - 1 is copied back on the side stream (`earlier` links each input to the one parked before it).
    """

    _latest = {}  # device -> weak reference to the input parked last there

    def __init__(self, hidden):
        self.device = hidden.device
        self.buffer = self.ready = None  # the return buffer's index and the event of the copy into it
        self.cpu = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=self.device.type == "cuda")
        _park(self.cpu)
        if self.device.type == "cuda":
            stream = _copy_stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))  # hidden is complete before it is copied
            with torch.cuda.stream(stream):
                self.cpu.copy_(hidden, non_blocking=True)
            hidden.record_stream(stream)  # its GPU memory is not reused before the copy has read it
        else:
            self.cpu.copy_(hidden)
        self.earlier = self._latest.get(self.device)
        self._latest[self.device] = weakref.ref(self)

    def prefetch(self, in_use=None):
        """Start the copy back into a return buffer other than `in_use`; `take` waits for it. An input larger
        than EARLY_COPY_SHARE of the GPU memory allowed stays where it is until `take`."""
        if self.cpu is None:
            return
        allowed = _gpu_memory_allowed(self.device)
        if allowed is not None and self.cpu.nbytes > EARLY_COPY_SHARE * allowed:
            return
        buffers = _ReturnBuffers.on(self.device)
        self.buffer = buffers.claim(self, in_use)
        target = buffers.tensors[self.buffer]
        if self.device.type != "cuda":
            target.copy_(self.cpu)
            return
        stream = _copy_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))  # the buffer's last reader is queued in full
        with torch.cuda.stream(stream):
            target.copy_(self.cpu, non_blocking=True)
            self.ready = stream.record_event()

    def take(self):
        """(the input on its device, ready for the current stream; the return buffer it is in, or None)."""
        buffers, on_gpu = _ReturnBuffers.on(self.device), self.device.type == "cuda"
        index = self.buffer if buffers.holds(self.buffer, self) else None
        if index is not None:
            if on_gpu:
                torch.cuda.current_stream(self.device).wait_event(self.ready)
            hidden = buffers.tensors[index].detach()  # a tensor of its own over the buffer's memory
        else:
            if on_gpu:
                torch.cuda.current_stream(self.device).wait_stream(_copy_stream(self.device))  # copy out done
            hidden = self.cpu.to(self.device, non_blocking=True)
        self.cpu = self.ready = None
        return hidden, index

    def prefetch_earlier(self, in_use):
        """Start the copy back of the input parked before this one, unless the switch `prefetch` is off."""
        if not switches.on("prefetch"):
            return
        earlier = self.earlier() if self.earlier is not None else None
        if earlier is not None:
            earlier.prefetch(in_use)


class _OffloadedLayer(torch.autograd.Function):
    """Run `run(hidden, *rest)` without keeping activations; park `hidden` on the CPU for the backward pass."""

    @staticmethod
    def forward(ctx, run, hidden, *rest):
        device = hidden.device
        ctx.run, ctx.rest, ctx.needs_input_gradient = run, rest, hidden.requires_grad
        ctx.autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type),
                        torch.is_autocast_cache_enabled())
        ctx.random_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
        ctx.parked = _ParkedInput(hidden)
        return run(hidden, *rest)  # autograd is off inside forward: nothing inside the layer is kept

    @staticmethod
    def backward(ctx, *output_gradients):
        if not torch.autograd._is_checkpoint_valid():  # the check PyTorch's reentrant checkpoint makes
            raise FtlibError(
                "offloaded checkpointing recomputes each layer inside the backward pass, which works with "
                "loss.backward() only, not torch.autograd.grad() or backward(inputs=...): call loss.backward(), "
                "or add_lora(..., use_gradient_checkpointing=False) to keep every activation instead")
        if ctx.parked is None:
            raise FtlibError(
                "this graph's offloaded layers were already recomputed by an earlier backward pass "
                "(retain_graph=True keeps the graph, not the parked inputs): run the forward pass again, or use "
                "add_lora(..., use_gradient_checkpointing=True), which can go backward twice")
        run, rest, parked = ctx.run, ctx.rest, ctx.parked
        device = parked.device
        on_gpu = device.type == "cuda"
        hidden, buffer = parked.take()
        hidden.requires_grad_(ctx.needs_input_gradient)
        parked.prefetch_earlier(buffer)  # the previous layer's input travels while this layer is recomputed
        ctx.parked = ctx.run = ctx.rest = None
        enabled, dtype, cache = ctx.autocast
        with torch.random.fork_rng(devices=[device] if on_gpu else []), \
                torch.enable_grad(), torch.autocast(device.type, enabled=enabled, dtype=dtype, cache_enabled=cache):
            if on_gpu:
                torch.cuda.set_rng_state(ctx.random_state, device)
            else:
                torch.set_rng_state(ctx.random_state)
            outputs = run(hidden, *rest)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(output, gradient) for output, gradient in zip(outputs, output_gradients)
                 if isinstance(output, torch.Tensor) and output.requires_grad and gradient is not None]
        if pairs:
            torch.autograd.backward([output for output, _ in pairs], [gradient for _, gradient in pairs])
        return (None, hidden.grad if ctx.needs_input_gradient else None) + (None,) * len(rest)


def offloaded_checkpoint(run, hidden, *rest, **keywords):
    """Checkpoint one layer call, keeping its input in CPU memory (CUDA); transformers calls it per layer.

    Example: `model.gradient_checkpointing_enable(); layer._gradient_checkpointing_func = offloaded_checkpoint`

    Falls back to PyTorch's reentrant checkpoint (the input stays on the GPU) where the input is not a CUDA
    tensor, another positional argument needs a gradient (transformers passes those as keywords, bound into
    `run`) or CPU memory is short, and runs the layer directly when nothing records gradients (evaluation
    inside a training-mode model).
    """
    if not torch.is_grad_enabled():
        return run(hidden, *rest, **keywords)
    other_gradients = any(isinstance(value, torch.Tensor) and value.requires_grad for value in rest)
    if (keywords or other_gradients or not (isinstance(hidden, torch.Tensor) and hidden.is_cuda)
            or not _room_in_cpu_memory(hidden.nbytes)):
        return reentrant_checkpoint(run, hidden, *rest, **keywords)
    return _OffloadedLayer.apply(_marking_recomputation(run), hidden, *rest)


def reentrant_checkpoint(run, *arguments, **keywords):
    """PyTorch's reentrant checkpoint of one layer call, with its recomputation reported by `recomputing()`.

    Example: `layer._gradient_checkpointing_func = reentrant_checkpoint` (what checkpointing mode True sets)
    """
    return checkpoint(_marking_recomputation(run), *arguments, use_reentrant=True, **keywords)
