"""ftlib/speed/switches.py: each speed option switched off through FTLIB_SPEED_OFF really stays off.

Where an option exists on a CPU the test watches it stay off; where it needs a GPU, the function that decides
is asked (with the GPU pretended where that decision needs one). The benchmark's plans, which switch options off
the same way, are checked here too.
"""

import collections
import contextlib
import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ftlib import format_dataset
from ftlib.demo import load_headlines
from ftlib.errors import FtlibError
from ftlib.speed import acceleration, switches

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def switch_off(monkeypatch):
    """switch_off("a", "b") sets FTLIB_SPEED_OFF=a,b for the rest of the test; afterwards every option is on."""
    from ftlib.speed.fused_lora import _Dequantizers
    from ftlib.speed.offloaded_checkpoint import release_return_buffers

    monkeypatch.delenv(switches.PLAIN_VARIABLE, raising=False)
    monkeypatch.delenv(switches.OFF_VARIABLE, raising=False)
    yield lambda *names: monkeypatch.setenv(switches.OFF_VARIABLE, ",".join(names))
    _Dequantizers.nf4_kernel = _Dequantizers.direct = True  # what the last fuse read, as no switch is set now
    release_return_buffers()


def _lora(model, checkpointing=True):
    from ftlib import add_lora

    return add_lora(model, r=8, lora_alpha=16, use_gradient_checkpointing=checkpointing)


def test_an_unknown_name_raises_with_every_known_name(switch_off):
    switch_off("fused_lora", "fused_lorra")
    with pytest.raises(FtlibError, match="'fused_lorra', which is not a speed option") as error:
        switches.on("fused_lora")
    assert all(name in str(error.value) for name in switches.OPTIONS)
    with pytest.raises(FtlibError, match="not a speed option: use any of liger"):
        switches.on("fused_lorra")


def test_names_are_read_when_asked_and_plain_keeps_the_nan_guard(switch_off, monkeypatch):
    assert switches.switched_off() == frozenset() and all(map(switches.on, switches.OPTIONS))
    switch_off(" fused_lora , nf4_kernel,")
    assert switches.switched_off() == {"fused_lora", "nf4_kernel"} and not switches.on("nf4_kernel")
    switch_off()
    assert switches.on("nf4_kernel")  # the variable changed: read again
    monkeypatch.setenv(switches.PLAIN_VARIABLE, "1")
    assert switches.switched_off() == set(switches.OPTIONS) - {"nan_guard", "nan_restore"}
    assert "nan_guard" in switches.table() and all(len(what) > 20 for what in switches.OPTIONS.values())


def test_fused_lora_off(tiny_model, switch_off, monkeypatch):
    model = _lora(tiny_model[0])
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    switch_off("fused_lora")
    assert acceleration.fuse_lora(model) == 0
    assert not any(hasattr(module, "_ftlib_peft_forward") for module in model.modules())


def _fused_calls(model, tokenizer):
    """How many projections each fused call computed, over one training forward and backward pass."""
    from ftlib.speed.fused_lora import _LoraProjections

    calls, original = [], _LoraProjections.apply
    batch = tokenizer(["Shares rose after the results.", "The bank cut its outlook."], return_tensors="pt",
                      padding=True)
    try:
        _LoraProjections.apply = lambda *args: calls.append(len(args[1])) or original(*args)
        model.train()
        model(**batch, labels=batch["input_ids"]).loss.backward()
    finally:
        _LoraProjections.apply = original
    return calls


def test_siblings_off_computes_each_projection_alone(tiny_model, switch_off):
    from ftlib.speed.fused_lora import fuse_lora_layers

    model, tokenizer = tiny_model
    model = _lora(model, checkpointing=False)
    fuse_lora_layers(model)
    layers = model.config.num_hidden_layers
    assert _fused_calls(model, tokenizer) == [3, 1, 2, 1] * layers  # q, k, v together; o; gate, up; down
    switch_off("siblings")
    assert fuse_lora_layers(model) == 0  # already fused: the switch is read again all the same
    assert _fused_calls(model, tokenizer) == [1] * 7 * layers
    assert model.get_base_model().model.layers[0].self_attn.q_proj._ftlib_siblings is None


def test_unread_outputs_off_keeps_down_proj_in_the_recomputation(tiny_model, switch_off, monkeypatch):
    from ftlib.speed import fused_lora

    model, tokenizer = tiny_model
    model = _lora(model, checkpointing=True)
    switch_off("unread_outputs")
    fused_lora.fuse_lora_layers(model)
    uses, dense_weight = collections.Counter(), fused_lora._dense_weight
    monkeypatch.setattr(fused_lora, "_dense_weight",
                        lambda layer, *arguments: uses.update([layer]) or dense_weight(layer, *arguments))
    _fused_calls(model, tokenizer)
    for layer in model.get_base_model().model.layers:
        assert uses[layer.mlp.down_proj.get_base_layer()] == 3  # forward, recomputation, backward


def test_nf4_kernel_and_direct_dequant_off_are_not_asked(tiny_path, switch_off, monkeypatch):
    """With both off, a 4-bit weight is made dense by bitsandbytes' operators; neither other way is tried."""
    import bitsandbytes

    from ftlib import load_model
    from ftlib.speed import fused_lora, nf4_kernel

    model = _lora(load_model(tiny_path, load_in_4bit=True, max_seq_length=64)[0])
    asked = []
    monkeypatch.setattr(nf4_kernel, "dequantize", lambda packed, state: asked.append("nf4_kernel"))
    monkeypatch.setattr(fused_lora, "_native_dequantizers", lambda: asked.append("direct") or {"scales": None})
    weight = next(module.weight for module in model.modules()
                  if getattr(getattr(module, "weight", None), "quant_state", None) is not None)
    pretend_gpu = SimpleNamespace(is_cuda=True, is_contiguous=lambda: True)
    switch_off("nf4_kernel", "direct_dequant")
    fused_lora.fuse_lora_layers(model)
    assert fused_lora._native_path(pretend_gpu, weight.quant_state) is None
    dense, _ = fused_lora._dequantize_4bit(weight.data, weight.quant_state)
    assert asked == [] and torch.equal(dense, bitsandbytes.functional.dequantize_4bit(weight.data, weight.quant_state))
    switch_off()
    fused_lora.fuse_lora_layers(model)  # the switches are read again when layers are fused
    fused_lora._native_path(pretend_gpu, weight.quant_state)
    fused_lora._dequantize_4bit(weight.data, weight.quant_state)
    assert asked == ["direct", "nf4_kernel"]


def test_offload_off_checkpoints_on_the_gpu(tiny_model, switch_off):
    from ftlib.speed.offloaded_checkpoint import reentrant_checkpoint

    switch_off("offload")
    model = _lora(tiny_model[0], checkpointing="offload")
    assert acceleration.gradient_checkpointing_mode(model) is True
    assert model.get_base_model().model.layers[0]._gradient_checkpointing_func is reentrant_checkpoint


def test_prefetch_off_copies_nothing_back_early(switch_off):
    from ftlib.speed.offloaded_checkpoint import _ParkedInput

    for off, copied_early in (((), True), (("prefetch",), False)):
        switch_off(*off)
        first = _ParkedInput(torch.randn(2, 3))
        second = _ParkedInput(torch.randn(2, 3))  # parked after `first`: its backward starts first's copy back
        second.prefetch_earlier(None)
        assert (first.buffer is not None) == copied_early


def test_padding_free_and_adamw_8bit_off(tiny_model, switch_off, monkeypatch):
    model = tiny_model[0]
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    assert acceleration.trainer_settings(model, padding_free=True)["optim"] == "adamw_8bit"
    switch_off("padding_free", "adamw_8bit")
    assert acceleration.trainer_settings(model, padding_free=True) == {"optim": "adamw_torch"}


def test_expandable_segments_off(switch_off, monkeypatch):
    calls = []
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", calls.append, raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    switch_off("expandable_segments")
    assert acceleration.use_expandable_segments() is False and calls == []


def test_varied_length_attention_off_keeps_cudnn(tiny_model, switch_off, monkeypatch):
    from datasets import Dataset

    mixed = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]})
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    switch_off("varied_length_attention")
    with acceleration.attention_suited_to(tiny_model[0], [mixed], 16) as switched:
        assert not switched and torch.backends.cuda.cudnn_sdp_enabled()


def test_liger_and_torch_rms_norm_off(tiny_model, switch_off, monkeypatch):
    model = tiny_model[0]
    applied = []
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    monkeypatch.setattr(acceleration, "liger_available", lambda: True)
    monkeypatch.setattr(acceleration, "apply_liger_kernels", lambda model: applied.append(model) or ["rms_norm"])
    assert acceleration.after_load(model, {}).ftlib_acceleration == ["rms_norm"]
    assert acceleration.torch_rms_norm_for("llama")
    switch_off("liger", "torch_rms_norm")
    assert acceleration.after_load(model, {}).ftlib_acceleration == [] and len(applied) == 1
    assert not acceleration.torch_rms_norm_for("llama")  # Liger's RMSNorm kernel then, where Liger runs


def test_nan_guard_off_leaves_the_gradients_to_the_optimizer(switch_off):
    from transformers import TrainerControl, TrainerState

    from ftlib.training.safety import NonFiniteLossGuard

    for off, dropped in (((), True), (("nan_guard",), False)):
        switch_off(*off)
        parameter = torch.nn.Parameter(torch.zeros(2))
        parameter.grad = torch.tensor([1.0, float("nan")])
        guard = NonFiniteLossGuard()
        arguments = SimpleNamespace(learning_rate=2e-4, fp16=False)
        guard.on_train_begin(arguments, TrainerState(), TrainerControl())
        optimizer = torch.optim.SGD([parameter], lr=0.1)
        guard.on_pre_optimizer_step(arguments, TrainerState(), TrainerControl(), optimizer=optimizer)
        assert (parameter.grad is None) == dropped and guard.triggered == dropped


# --- The benchmark's plans: data in benchmarks/plans.toml, switching options off by these names ---

@contextlib.contextmanager
def _benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run

        yield run
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_benchmark_plan_loads_and_names_known_options():
    with _benchmark() as benchmark:
        plans = benchmark.load_plans()
        assert {"smoke", "qlora_8b", "switches_off"} <= set(plans)
        for name, plan in plans.items():
            assert plan["about"] and plan["runs"], name
            names = [spec["name"] for spec in plan["runs"]]
            assert len(set(names)) == len(names), name  # each run of a plan is told apart by its name
        switched = {option for spec in plans["switches_off"]["runs"] for option in spec.get("off", ())}
        assert switched == set(switches.OPTIONS) - {"padding_free", "varied_length_attention", "labelled_logits"}
        assert all(not spec["gpu"] for spec in plans["smoke"]["runs"])
        assert any("labelled_logits" in spec.get("off", ()) for spec in plans["smoke"]["runs"])  # a CPU option
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            benchmark.main(["--plan", "switches_off", "--runs", "1,3-4", "--dry-run"])
        assert [line.count('"off"') for line in output.getvalue().splitlines()] == [0, 1, 1]


def test_a_plan_with_an_unknown_option_stops_with_the_known_names(tmp_path):
    plans = tmp_path / "plans.toml"
    plans.write_text('[plans.bad]\nabout = "x"\nruns = [{ system = "ftlib", shape = "tiny", off = ["fast"] }]\n')
    with _benchmark() as benchmark, pytest.raises(FtlibError, match="'fast', which is not a speed option"):
        benchmark.load_plans(plans)


def test_benchmark_readme_tables_are_what_report_makes_of_results_json(tmp_path):
    """benchmarks/README.md's generated tables match results.json (and the code: switch names, estimate_memory)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import report
    finally:
        sys.path.remove(str(BENCHMARKS))
    readme = tmp_path / "README.md"
    readme.write_text((BENCHMARKS / "README.md").read_text())
    report.write_readme(report.load_calls(BENCHMARKS / "results.json"), readme)
    assert readme.read_text() == (BENCHMARKS / "README.md").read_text(), "run: python benchmarks/report.py"


def test_labelled_logits_give_the_same_loss_and_gradients_as_every_position(tiny_model):
    from ftlib.training.trainer import _loss_on_labelled_positions

    model, tokenizer = tiny_model
    model = _lora(model, checkpointing=False)
    data = format_dataset(load_headlines("train")[:4], tokenizer, verbose=False)
    batch = tokenizer.pad({"input_ids": data["input_ids"]}, return_tensors="pt")
    labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(row) for row in data["labels"]], batch_first=True,
                                             padding_value=-100)
    inputs = {**batch, "labels": labels}
    learned = int((labels[:, 1:] != -100).sum())
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]

    def loss_and_gradients(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), [parameter.grad.clone() for parameter in trained]

    full, full_gradients = loss_and_gradients(lambda: model(**inputs, num_items_in_batch=learned).loss)
    kept, kept_gradients = loss_and_gradients(lambda: _loss_on_labelled_positions(model, inputs, learned))
    assert torch.allclose(full, kept, atol=1e-6), (full, kept)
    for one, other in zip(full_gradients, kept_gradients):
        assert torch.allclose(one, other, atol=1e-6)
    assert any(gradient.abs().sum() > 0 for gradient in kept_gradients)
    # Rows padded to one length: only a few positions learn a label, so far fewer logits were computed.
    assert (labels[:, 1:] != -100).any(dim=0).sum() < labels.shape[1] / 2


def test_labelled_logits_off_trains_to_the_same_losses(switch_off, tmp_path, monkeypatch):
    from ftlib import train
    from ftlib.training import trainer

    calls = []
    original = trainer._loss_on_labelled_positions
    monkeypatch.setattr(trainer, "_loss_on_labelled_positions", lambda *args: calls.append(1) or original(*args))
    losses = {}
    for off in ((), ("labelled_logits",)):
        switch_off(*off)
        model, tokenizer = load_model_fresh()
        model = _lora(model, checkpointing=False)
        data = format_dataset(load_headlines("train")[:16], tokenizer, verbose=False)
        history = train(model, tokenizer, data, max_steps=3, per_device_train_batch_size=2,
                        gradient_accumulation_steps=2, output_dir=str(tmp_path), verbose=False)
        losses[off] = history.loss
        assert bool(calls) == (not off)  # the option on: every micro-batch went through it; off: none did
        calls.clear()
    assert losses[()] == pytest.approx(losses[("labelled_logits",)], abs=1e-5)


def load_model_fresh():
    from ftlib import load_model

    return load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=256)
