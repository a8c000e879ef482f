"""ftlib/speed/offloaded_checkpoint.py: the "offload" checkpointing recomputes exactly what the first pass computed.

The function parks a layer's input in CPU memory and recomputes the layer in the backward pass. On a CPU
the production entry point hands CPU tensors to PyTorch's reentrant checkpoint, so these tests call the
autograd function directly (it runs on any device) and compare it with the layer run without checkpointing:
same output, same gradients, including dropout's random mask and autocast's precision.
"""

import os
import warnings

import pytest
import torch
from torch import nn

from ftlib.speed.offloaded_checkpoint import _OffloadedLayer, offloaded_checkpoint


class _Layer(nn.Module):
    """A small residual block with dropout, like a decoder layer with a LoRA dropout."""

    def __init__(self, width=16, dropout=0.3):
        super().__init__()
        self.up, self.down, self.dropout = nn.Linear(width, 4 * width), nn.Linear(4 * width, width), nn.Dropout(dropout)

    def forward(self, hidden, scale=1.0):
        return hidden + scale * self.down(torch.relu(self.up(self.dropout(hidden))))


def _run(layer, hidden, checkpointed, autocast=False):
    """Output and gradients (input, parameters) of layer(hidden) under a fixed seed."""
    hidden = hidden.clone().requires_grad_(True)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output = _OffloadedLayer.apply(layer, hidden) if checkpointed else layer(hidden)
        torch.manual_seed(99)  # the backward pass must not depend on the random state at its time
    (output.float() ** 2).sum().backward()
    gradients = [hidden.grad] + [parameter.grad.clone() for parameter in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return output.detach(), gradients


def _input_gradient(output, hidden):
    """d(output.sum())/d(hidden) through loss.backward(), the one way the function supports."""
    hidden.grad = None
    output.sum().backward()
    return hidden.grad


@pytest.mark.parametrize("autocast", [False, True])
def test_recomputation_gives_the_same_output_and_gradients(autocast):
    layer = _Layer().train()
    hidden = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0))
    expected_output, expected_gradients = _run(layer, hidden, checkpointed=False, autocast=autocast)
    output, gradients = _run(layer, hidden, checkpointed=True, autocast=autocast)
    if autocast:  # bf16 gradients differ from float32 ones, so a float32 recomputation would be caught
        assert not torch.equal(expected_gradients[1], _run(layer, hidden, checkpointed=False)[1][1])
    assert torch.equal(output, expected_output)
    for gradient, expected in zip(gradients, expected_gradients):
        assert torch.equal(gradient, expected)  # the replayed dropout mask and precision are the same


def test_without_the_saved_random_state_the_check_above_would_fail(monkeypatch):
    """Guards the test above: a recomputation with a fresh dropout mask gives other gradients."""
    layer = _Layer().train()
    hidden = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0))
    _, expected_gradients = _run(layer, hidden, checkpointed=False)
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    _, gradients = _run(layer, hidden, checkpointed=True)
    assert not torch.equal(gradients[1], expected_gradients[1])


def test_only_the_input_is_kept_and_it_is_a_copy():
    """The layer's inner activations are not saved; the parked input survives changes to the original."""
    layer = _Layer(dropout=0.0)
    hidden = torch.randn(2, 4, 16).requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        output = _OffloadedLayer.apply(layer, hidden * 1.0)
    assert saved == []  # nothing recorded inside the layer on the first pass
    expected = torch.autograd.grad(layer(hidden).sum(), hidden)[0]
    assert torch.equal(_input_gradient(output, hidden), expected)


def test_other_positional_arguments_pass_through_and_get_no_gradient():
    layer = _Layer(dropout=0.0)
    hidden = torch.randn(2, 4, 16).requires_grad_(True)
    output = _OffloadedLayer.apply(layer, hidden, 0.5)
    assert torch.equal(output, layer(hidden, 0.5))
    output.sum().backward()
    assert hidden.grad is not None and layer.up.weight.grad is not None


def test_entry_point_without_gradients_or_on_a_cpu():
    """No autograd: the layer runs directly. A CPU tensor: PyTorch's reentrant checkpoint, same numbers."""
    layer = _Layer(dropout=0.0)
    hidden = torch.randn(2, 4, 16).requires_grad_(True)
    with torch.no_grad():
        assert offloaded_checkpoint(layer, hidden).grad_fn is None
    expected = torch.autograd.grad(layer(hidden).sum(), hidden)[0]
    output = offloaded_checkpoint(layer, hidden)
    assert type(output.grad_fn).__name__ == "CheckpointFunctionBackward"
    output.sum().backward()  # the reentrant form supports .backward() only
    assert torch.equal(hidden.grad, expected)


def test_a_whole_model_trains_the_same_through_the_function(tiny_path):
    """Each decoder layer of the tiny model routed through the function: transformers' layer calls fit it."""
    from ftlib import add_lora, load_model

    def run(routed):
        model, tokenizer = load_model(tiny_path, load_in_4bit=False, max_seq_length=64)
        model = add_lora(model, r=8, lora_alpha=16, lora_dropout=0.1, use_gradient_checkpointing=True)
        if routed:
            for layer in model.get_base_model().model.layers:
                layer._gradient_checkpointing_func = _OffloadedLayer.apply
        batch = tokenizer(["The bank cut its outlook.", "Shares rose."], return_tensors="pt", padding=True)
        model.train()
        torch.manual_seed(5)
        loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        loss.backward()
        return loss.detach(), {name: parameter.grad for name, parameter in model.named_parameters()
                               if parameter.grad is not None}

    expected_loss, expected_gradients = run(routed=False)
    loss, gradients = run(routed=True)
    assert torch.equal(loss, expected_loss)
    assert gradients.keys() == expected_gradients.keys() and len(gradients) > 0
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, expected_gradients[name], atol=1e-7, rtol=1e-5), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_input_waits_in_pinned_cpu_memory():
    layer = _Layer(dropout=0.1).cuda().train()
    hidden = torch.randn(2, 4, 16, device="cuda").requires_grad_(True)
    torch.manual_seed(1)
    output = offloaded_checkpoint(layer, hidden)
    assert type(output.grad_fn).__name__ == "_OffloadedLayerBackward"
    parked = output.grad_fn.parked.cpu
    assert parked.device.type == "cpu" and parked.is_pinned()  # pinned: the copies need not block the CPU
    torch.manual_seed(1)
    expected = torch.autograd.grad(layer(hidden).sum(), hidden)[0]
    assert torch.equal(_input_gradient(output, hidden), expected)


def _three_layers(device):
    """Three layers run through the autograd function; the layers, the input and each layer's output."""
    layers = [_Layer(dropout=0.0).to(device).train() for _ in range(3)]
    hidden = torch.randn(2, 4, 16, device=device).requires_grad_(True)
    outputs, current = [], hidden
    for layer in layers:
        current = _OffloadedLayer.apply(layer, current)
        outputs.append(current)
    return layers, hidden, outputs


def test_each_parked_input_knows_the_one_parked_before_it():
    """The backward pass of layer k starts the copy back of layer k - 1's input: this link finds it."""
    _, _, outputs = _three_layers("cpu")
    parked = [output.grad_fn.parked for output in outputs]
    assert parked[2].earlier() is parked[1] and parked[1].earlier() is parked[0]
    outputs[2].sum().backward()
    assert all(each.cpu is None for each in parked)  # every CPU copy was let go


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_earlier_input_is_copied_back_during_the_later_backward(device):
    from ftlib.speed.offloaded_checkpoint import _ReturnBuffers

    layers, hidden, outputs = _three_layers(device)
    parked = [output.grad_fn.parked for output in outputs]
    expected_input, seen = outputs[0].detach().clone(), []

    def between_layers(gradient):  # runs after layer 2's backward, before layer 1's
        if device == "cuda":
            torch.cuda.synchronize()
        buffers = _ReturnBuffers.on(hidden.device)
        held = buffers.holds(parked[1].buffer, parked[1]) and torch.equal(buffers.tensors[parked[1].buffer],
                                                                          expected_input)
        seen.append((held, parked[0].buffer is None))
        return gradient

    outputs[1].register_hook(between_layers)
    gradient = _input_gradient(outputs[2], hidden)
    assert seen == [(True, True)]  # layer 1's input was on its way back, and only one layer ahead
    assert parked[0].buffer != parked[1].buffer  # the two buffers take turns
    current = hidden
    for layer in layers:
        current = layer(current)
    assert torch.equal(gradient, torch.autograd.grad(current.sum(), hidden)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_an_input_too_large_for_the_early_copy_comes_back_when_its_layer_needs_it(device, monkeypatch):
    """With GPU memory tight (here: 100 times a layer input allowed, so 1% is just under one input) no input is
    copied back early, which would hold a second buffer; each comes back on demand and the gradients stay exact."""
    from ftlib.speed import offloaded_checkpoint

    layers, hidden, outputs = _three_layers(device)
    monkeypatch.setattr(offloaded_checkpoint, "_gpu_memory_allowed", lambda device: 100 * hidden.nbytes - 1)
    parked = [output.grad_fn.parked for output in outputs]
    gradient = _input_gradient(outputs[2], hidden)
    assert all(each.buffer is None for each in parked)  # none went into a return buffer
    current = hidden
    for layer in layers:
        current = layer(current)
    assert torch.equal(gradient, torch.autograd.grad(current.sum(), hidden)[0])
    monkeypatch.setattr(offloaded_checkpoint, "_gpu_memory_allowed", lambda device: 100 * hidden.nbytes)
    _, hidden, outputs = _three_layers(device)
    parked = [output.grad_fn.parked for output in outputs]
    _input_gradient(outputs[2], hidden)
    assert parked[1].buffer is not None and parked[0].buffer is not None  # exactly 1%: copied back early


@pytest.mark.parametrize("device", DEVICES)
def test_an_input_whose_buffer_was_handed_on_comes_from_its_cpu_copy(device):
    """Three forward passes, then backward passes out of order: the third pass's backward copies back the
    second pass's last input early; the first pass's backward then reuses that buffer. Gradients stay exact."""
    from ftlib.speed.offloaded_checkpoint import _ReturnBuffers

    passes = [_three_layers(device) for _ in range(3)]
    gradients = {}
    for index in (2, 0):
        _, hidden, outputs = passes[index]
        gradients[index] = _input_gradient(outputs[2], hidden)
    last_of_second = passes[1][2][2].grad_fn.parked
    assert last_of_second.buffer is not None  # it was copied back early...
    assert not _ReturnBuffers.on(passes[1][1].device).holds(last_of_second.buffer, last_of_second)  # ...and overwritten
    gradients[1] = _input_gradient(passes[1][2][2], passes[1][1])
    for index, (layers, hidden, _) in enumerate(passes):
        current = hidden
        for layer in layers:
            current = layer(current)
        assert torch.equal(gradients[index], torch.autograd.grad(current.sum(), hidden)[0])


def test_released_buffers_are_gone_and_the_next_backward_still_exact():
    from ftlib.speed.offloaded_checkpoint import _ReturnBuffers, release_return_buffers

    _, hidden, outputs = _three_layers("cpu")
    outputs[1].sum().backward()  # layers 1 and 0: layer 0's input came back in a buffer
    assert len(_ReturnBuffers.on(hidden.device).tensors) == 2
    release_return_buffers()
    assert _ReturnBuffers.on(hidden.device).tensors == []
    layers, hidden, outputs = _three_layers("cpu")
    gradient = _input_gradient(outputs[2], hidden)
    current = hidden
    for layer in layers:
        current = layer(current)
    assert torch.equal(gradient, torch.autograd.grad(current.sum(), hidden)[0])


def test_unsupported_backward_calls_say_what_to_do_instead():
    """Like PyTorch's reentrant checkpoint: no autograd.grad (it would fill every parameter's .grad), and
    each layer is recomputed once (a second backward pass over a retained graph has nothing left to use)."""
    from ftlib.errors import FtlibError

    layer = _Layer(dropout=0.0)
    hidden = torch.randn(2, 4, 16).requires_grad_(True)
    with pytest.raises(FtlibError, match=r"loss.backward\(\) only.*use_gradient_checkpointing=False"):
        torch.autograd.grad(_OffloadedLayer.apply(layer, hidden).sum(), hidden)
    output = _OffloadedLayer.apply(layer, hidden)
    output.sum().backward(retain_graph=True)
    with pytest.raises(FtlibError, match="already recomputed.*use_gradient_checkpointing=True"):
        output.sum().backward()


def test_parked_bytes_are_counted_until_the_backward_pass_frees_them():
    from ftlib.speed import offloaded_checkpoint as module

    layer = _Layer(dropout=0.0)
    hidden = torch.randn(2, 4, 16).requires_grad_(True)
    before = module._Parking.parked
    output = _OffloadedLayer.apply(layer, hidden)
    assert module._Parking.parked == before + hidden.numel() * 4
    output.sum().backward()
    assert module._Parking.parked == before
    output = _OffloadedLayer.apply(layer, hidden)
    del output  # a forward pass whose backward never runs frees its parked input too
    assert module._Parking.parked == before


def test_short_cpu_memory_keeps_inputs_on_the_gpu_with_one_warning(monkeypatch):
    from ftlib.speed import offloaded_checkpoint as module

    for name, value in (("parked", 0), ("measured", False), ("warned", False)):
        monkeypatch.setattr(module._Parking, name, value)
    readings = iter([10 * 2**20, 2**40])  # 10 MB free at the first park; later readings must not matter
    monkeypatch.setattr(module, "_available_cpu_memory", lambda: next(readings))
    assert module._room_in_cpu_memory(4 * 2**20)  # half of 10 MB may be parked
    monkeypatch.setattr(module._Parking, "parked", 4 * 2**20)
    with pytest.warns(UserWarning, match="CPU memory is short: 0.0 GB .* the rest stay on the GPU"):
        assert not module._room_in_cpu_memory(4 * 2**20)
    monkeypatch.setattr(module._Parking, "parked", 0)  # the next forward pass, with the same limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert module._room_in_cpu_memory(4 * 2**20) and not module._room_in_cpu_memory(6 * 2**20)
    assert caught == []  # one warning per process, not one per layer
    monkeypatch.setattr(module._Parking, "measured", False)
    monkeypatch.setattr(module, "_available_cpu_memory", lambda: None)  # unknown: no limit
    assert module._room_in_cpu_memory(2**40)


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads Linux's /proc/meminfo")
def test_available_cpu_memory_is_read_on_linux():
    from ftlib.speed.offloaded_checkpoint import _available_cpu_memory

    assert 2**20 < _available_cpu_memory() < 2**50
