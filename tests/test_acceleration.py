"""ftlib.speed.acceleration keeps the math: on the same batch, each option's loss equals the plain path's.

On a CPU the GPU-only options (Liger kernels, 8-bit AdamW, fused LoRA) must switch themselves off without
an error; the options that exist here (both checkpointing forms, padding-free batching)
must give the same loss and gradients as the plain path. The benchmark's CPU smoke mode runs here too.
"""

import collections
import sys
from pathlib import Path

import pytest
import torch

from ftlib.speed import acceleration
from ftlib.errors import FtlibError
from ftlib.speed.offloaded_checkpoint import offloaded_checkpoint, reentrant_checkpoint

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _lora(model, checkpointing, lora_alpha=16):
    from ftlib import add_lora

    return add_lora(model, r=8, lora_alpha=lora_alpha, use_gradient_checkpointing=checkpointing)


def _batch(tokenizer, texts):
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return encoded["input_ids"], encoded["attention_mask"], labels


TEXTS = ["Shares of the company rose after the results beat forecasts.",
         "Investors worried when the factory closed.", "The bank cut its outlook."]


def _loss_and_gradients(model, tokenizer):
    input_ids, attention_mask, labels = (tensor.to(model.device) for tensor in _batch(tokenizer, TEXTS))
    model.train()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                 if parameter.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), gradients


def test_after_load_changes_nothing_on_cpu(tiny_model):
    model, tokenizer = tiny_model
    input_ids, attention_mask, _ = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).logits
    returned = acceleration.after_load(model, model.ftlib_settings)
    with torch.no_grad():
        after = returned(input_ids=input_ids, attention_mask=attention_mask).logits
    assert returned is model
    assert model.ftlib_acceleration == []  # no Liger kernels without a GPU
    assert torch.equal(before, after)


@pytest.mark.parametrize("mode", [True, "offload"])
def test_checkpointing_keeps_loss_and_gradients(tiny_path, mode):
    from ftlib import load_model

    plain_model, tokenizer = load_model(tiny_path, load_in_4bit=False, max_seq_length=128)
    plain_loss, plain_gradients = _loss_and_gradients(_lora(plain_model, False), tokenizer)
    model, _ = load_model(tiny_path, load_in_4bit=False, max_seq_length=128)
    model = _lora(model, mode)
    assert acceleration.is_checkpointing(model)
    assert acceleration.gradient_checkpointing_mode(model) == mode
    checkpoint = model.get_base_model().model.layers[0]._gradient_checkpointing_func
    # PyTorch's reentrant checkpoint, reporting its recomputation; or ftlib's own (the same for a layer on a CPU)
    assert checkpoint is (reentrant_checkpoint if mode is True else offloaded_checkpoint)
    loss, gradients = _loss_and_gradients(model, tokenizer)
    assert torch.allclose(loss, plain_loss, atol=1e-6)
    assert gradients.keys() == plain_gradients.keys() and gradients
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, plain_gradients[name], atol=1e-6, rtol=1e-4), name
    assert "activation_offloading" not in acceleration.trainer_settings(model)  # ftlib offloads, not TRL


def test_padding_free_batch_gives_the_padded_loss(tiny_model):
    """Sequences laid end to end (no padding) must score exactly as the padded batch does."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tokenizer = tiny_model
    assert acceleration.supports_padding_free(model)
    rows = [{"input_ids": tokenizer(text)["input_ids"]} for text in TEXTS]
    model.eval()
    losses = {}
    for padding_free in (False, True):
        collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free)
        batch = collator(rows)
        if padding_free:
            assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        with torch.no_grad():
            losses[padding_free] = model(**batch, use_cache=False).loss  # training never uses the cache
    assert torch.allclose(losses[True], losses[False], atol=1e-5)


def test_trainer_settings_on_cpu(tiny_model):
    model, _ = tiny_model
    settings = acceleration.trainer_settings(model)
    assert settings == {"optim": "adamw_torch"}  # 8-bit AdamW needs a GPU; no padding-free unless asked
    with_padding_free = acceleration.trainer_settings(model, padding_free=True)
    assert with_padding_free["padding_free"] is True and with_padding_free["max_length"] is None


def test_trainer_settings_without_padding_free_attention(tiny_model):
    model, _ = tiny_model
    model.config._attn_implementation = "eager"
    assert not acceleration.supports_padding_free(model)
    assert "padding_free" not in acceleration.trainer_settings(model, padding_free=True)


def test_plain_switch_turns_everything_off(tiny_model, monkeypatch):
    model, _ = tiny_model
    monkeypatch.setenv("FTLIB_PLAIN", "1")
    assert acceleration.plain_requested()
    assert acceleration.trainer_settings(model, padding_free=True) == {"optim": "adamw_torch"}
    assert acceleration.after_load(model, {}).ftlib_acceleration == []


def test_bad_checkpointing_mode_names_the_choices(tiny_model):
    model, _ = tiny_model
    with pytest.raises(FtlibError, match="True, False or 'offload'"):
        acceleration.enable_gradient_checkpointing(model, "sometimes")
    from ftlib import add_lora

    with pytest.raises(FtlibError, match="got 1: try 'offload'"):  # 1 is not True: a typo, not a mode
        add_lora(model, use_gradient_checkpointing=1)
    assert not hasattr(model, "peft_config") and not acceleration.is_checkpointing(model)  # the model is untouched


def test_checkpointing_off_turns_it_off(tiny_model):
    model, _ = tiny_model
    acceleration.enable_gradient_checkpointing(model, True)
    assert acceleration.is_checkpointing(model)
    acceleration.enable_gradient_checkpointing(model, False)
    assert not acceleration.is_checkpointing(model)


def test_checkpointing_and_adapters_use_no_deprecated_name(tiny_model, tmp_path):
    """transformers 5.23 renamed gradient to activation checkpointing and warns on the old names: on the newest
    set CI tests, turning it on and off, wrapping in LoRA, reloading the adapter and configuring the trainer warn
    nothing (a warning would print into the notebooks' checked cells)."""
    import warnings

    from trl import SFTConfig

    from ftlib import add_lora, load_model, save

    model, tokenizer = tiny_model
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = add_lora(model, use_gradient_checkpointing=True)
        assert acceleration.is_checkpointing(model)
        acceleration.enable_gradient_checkpointing(model, False)
        assert not acceleration.is_checkpointing(model)
        save(model, tokenizer, tmp_path / "adapter")
        load_model(str(tmp_path / "adapter"))
        config = SFTConfig(output_dir=str(tmp_path / "run"), report_to="none", bf16=False,
                           **acceleration.trainer_checkpointing_off())
    assert not config.gradient_checkpointing


def test_rope_dispatch_uses_the_plain_function_on_cpu_tensors():
    calls = []

    def fast(q, k, cos, sin, *args, **kwargs):
        raise AssertionError("a Triton kernel must never see CPU tensors")

    def plain(q, k, cos, sin, *args, **kwargs):
        calls.append(kwargs)
        return q, k

    dispatch = acceleration._dispatch_by_device(fast, plain)
    q = torch.ones(1, 2, 3, 4)
    assert dispatch(q, q, q, q, unsqueeze_dim=1)[0] is q
    assert calls == [{"unsqueeze_dim": 1}]
    assert dispatch._ftlib_plain is plain


def test_pytorch_rms_norm_computes_the_llama_norm():
    """PyTorch's RMSNorm, which replaces Liger's on Llama-style models on a GPU, is the Llama norm within one
    bf16 rounding step; on CPU tensors the replacement hands over to the model's own forward, bit for bit."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64, generator=generator))
        hidden = (3 * torch.randn(8, 64, generator=generator)).to(torch.bfloat16)
        expected = norm(hidden)
        assert torch.equal(acceleration._fused_rms_norm_forward(norm, hidden), expected)
        fused = torch.nn.functional.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)
    assert fused.dtype == torch.bfloat16
    one_step = expected.float().abs() * 2 ** -7  # bf16 keeps 8 significant bits
    assert ((fused.float() - expected.float()).abs() <= one_step).all()
    assert {"llama", "mistral", "qwen2", "qwen3"} <= acceleration.TORCH_RMS_NORM_MODELS


def test_liger_is_not_available_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert not acceleration.liger_available()


@pytest.mark.slow
def test_benchmark_smoke_ftlib_matches_plain(tmp_path):
    """The benchmark's CPU smoke mode: ftlib's path and the plain recipe agree on every loss."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run as benchmark
    finally:
        sys.path.remove(str(BENCHMARKS))
    benchmark.make_checkpoint("tiny", tmp_path / "tiny")
    results = {}
    for system, padding_free in (("ftlib", False), ("plain", False), ("ftlib", True)):
        spec = benchmark.make_spec(system, "tiny", method="lora16", mix="variable", length=256, steps=2, warmup=1,
                                   dtype="float32", gpu=False, padding_free=padding_free,
                                   checkpoint=str(tmp_path / "tiny"))
        results[(system, padding_free)] = benchmark.worker(spec)
    plain = results[("plain", False)]
    for key in (("ftlib", False), ("ftlib", True)):
        result = results[key]
        assert result["tokens_per_second"] > 0 and len(result["losses"]) == 2
        assert result["parity_loss"] == pytest.approx(plain["parity_loss"], abs=1e-5)
        assert result["losses"] == pytest.approx(plain["losses"], abs=1e-4)
        assert result["step_tokens"] == plain["step_tokens"]  # the same real tokens were trained on
    # padding-free spends no slots on padding; the padded batch does
    assert sum(results[("ftlib", True)]["step_slots"]) == sum(plain["step_tokens"])
    assert sum(plain["step_slots"]) > sum(plain["step_tokens"])


def test_failing_kernels_fall_back_to_the_plain_model(tiny_model, monkeypatch):
    """If Liger cannot patch this model (a mismatched release, say), loading still works, plainly."""
    model, _ = tiny_model

    def broken(model):
        raise RuntimeError("unsupported transformers version")

    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    monkeypatch.setattr(acceleration, "liger_available", lambda: True)
    monkeypatch.setattr(acceleration, "apply_liger_kernels", broken)
    with pytest.warns(UserWarning, match="Liger kernels not applied"):
        returned = acceleration.after_load(model, {})
    assert returned is model and model.ftlib_acceleration == []


def test_gpu_settings_when_on_cuda(tiny_model, monkeypatch):
    """On a GPU: 8-bit AdamW; offloading is ftlib's checkpoint function, never TRL's hooks (checked without a GPU)."""
    model, _ = tiny_model
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    for mode in (True, "offload"):
        acceleration.enable_gradient_checkpointing(model, mode)
        assert acceleration.trainer_settings(model) == {"optim": "adamw_8bit"}


def _lora_with_nonzero_update(model, checkpointing=True, lora_alpha=16):
    """LoRA adapters whose B matrices are not zero, so the adapter's share of the output is really checked."""
    model = _lora(model, checkpointing, lora_alpha)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


@pytest.mark.parametrize("load_in_4bit, lora_alpha", [(False, 16), (True, 16), (True, 8)])
def test_fused_lora_keeps_loss_and_gradients(tiny_path, load_in_4bit, lora_alpha):
    """The fused LoRA path computes PEFT's numbers: same loss, same adapter gradients (float32 here), with the
    update scaled (alpha 16 at r=8) or not (alpha 8, where the backward pass skips the scaling)."""
    from ftlib import load_model
    from ftlib.speed.fused_lora import fuse_lora_layers, unfuse_lora_layers

    model, tokenizer = load_model(tiny_path, load_in_4bit=load_in_4bit, dtype=torch.float32, max_seq_length=128)
    model = _lora_with_nonzero_update(model, lora_alpha=lora_alpha)
    plain_loss, plain_gradients = _loss_and_gradients(model, tokenizer)
    projections = 7 * model.config.num_hidden_layers
    assert fuse_lora_layers(model) == projections
    assert fuse_lora_layers(model) == 0  # already fused: nothing changes twice
    loss, gradients = _loss_and_gradients(model, tokenizer)
    assert torch.allclose(loss, plain_loss, atol=1e-5)
    assert gradients.keys() == plain_gradients.keys() and len(gradients) == 2 * projections
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, plain_gradients[name], atol=1e-6, rtol=1e-4), name
    assert unfuse_lora_layers(model) == projections
    assert torch.allclose(_loss_and_gradients(model, tokenizer)[0], plain_loss, atol=1e-6)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")  # a no-gradient pass in train mode
def test_fused_lora_leaves_generation_and_other_adapters_to_peft(tiny_path):
    """In eval mode without gradients (generation) or with the adapter switched off, PEFT's own forward runs;
    in train mode it is fused, also without gradients (the first pass of reentrant checkpointing)."""
    from ftlib import load_model
    from ftlib.speed.fused_lora import _LoraProjections, fuse_lora_layers

    model, tokenizer = load_model(tiny_path, load_in_4bit=False, max_seq_length=128)
    model = _lora_with_nonzero_update(model)
    input_ids, attention_mask, labels = (tensor.to(model.device) for tensor in _batch(tokenizer, TEXTS))
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    fuse_lora_layers(model)
    calls = []  # how many projections each fused call computed
    original = _LoraProjections.apply
    try:
        _LoraProjections.apply = lambda *args: calls.append(len(args[1])) or original(*args)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.equal(logits, expected) and not calls
        model.train()
        with model.disable_adapter():
            model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        assert not calls
        projections = 7 * model.config.num_hidden_layers
        with torch.no_grad():
            fused_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        tolerance = 1e-5 if expected.dtype == torch.float32 else 2e-2 * float(expected.abs().max())  # bf16 on a GPU
        # each layer's q, k and v in one call, gate and up in another, o and down alone
        assert calls == [3, 1, 2, 1] * model.config.num_hidden_layers
        assert torch.allclose(fused_logits, expected, atol=tolerance)
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        assert sum(calls) >= 3 * projections  # forward, and the recomputation of reentrant checkpointing
    finally:
        _LoraProjections.apply = original


class _AttentionLike(torch.nn.Module):
    """q, k and v of one input (k of another when `other` is given), with biases, then o."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(12, width) for width in (12, 6, 6))
        self.o_proj = torch.nn.Linear(24, 12)

    def forward(self, x, other=None):
        query, key, value = self.q_proj(x), self.k_proj(x if other is None else other), self.v_proj(x)
        return self.o_proj(torch.cat([query, key, value], -1))


def test_fused_siblings_compute_q_k_and_v_together_and_step_back_when_fed_differently():
    """Siblings with biases and different scales give PEFT's outputs and gradients from one call; a block that
    feeds k another tensor still gets the right numbers, and from then on each projection runs on its own."""
    from peft import LoraConfig, get_peft_model

    from ftlib.speed.fused_lora import _LoraProjections, fuse_lora_layers

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, alpha_pattern={"k_proj": 2}, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                         "o_proj"])
    model = get_peft_model(_AttentionLike(), config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    x, other = torch.randn(2, 5, 12), torch.randn(2, 5, 12)

    def outputs_and_gradients(*inputs):
        output = model(*inputs)
        output.square().sum().backward()
        gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return output.detach(), gradients

    expected = {feed: outputs_and_gradients(*feed) for feed in ((x,), (x, other))}
    assert fuse_lora_layers(model) == 4
    calls = []
    original = _LoraProjections.apply
    try:
        _LoraProjections.apply = lambda *args: calls.append(len(args[1])) or original(*args)
        for feed in ((x,), (x, other), (x,)):
            output, gradients = outputs_and_gradients(*feed)
            assert torch.allclose(output, expected[feed][0], atol=1e-5)
            assert gradients.keys() == expected[feed][1].keys() and len(gradients) == 8
            for name, gradient in gradients.items():
                assert torch.allclose(gradient, expected[feed][1][name], atol=1e-5), name
    finally:
        _LoraProjections.apply = original
    # together; then q, k and v from x, k again from `other`, v and o alone; then one by one
    assert calls == [3, 1] + [3, 1, 1, 1] + [1, 1, 1, 1]
    assert not model.base_model.model.q_proj._ftlib_siblings.grouped


def test_fused_siblings_are_computed_apart_while_one_of_them_needs_peft():
    """A sibling with dropout (which PEFT's forward applies) keeps PEFT's forward, and the others run alone."""
    from peft import LoraConfig, get_peft_model

    from ftlib.speed.fused_lora import _LoraProjections, fuse_lora_layers

    torch.manual_seed(0)
    model = get_peft_model(_AttentionLike(), LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.base_model.model.k_proj.lora_dropout["default"] = torch.nn.Dropout(0.0)  # not plain LoRA any more
    x = torch.randn(2, 5, 12)
    expected = model(x)
    fuse_lora_layers(model)
    calls = []
    original = _LoraProjections.apply
    try:
        _LoraProjections.apply = lambda *args: calls.append(len(args[1])) or original(*args)
        assert torch.allclose(model(x), expected, atol=1e-6)
    finally:
        _LoraProjections.apply = original
    assert calls == [1, 1, 1]  # q, v and o fused, each alone; k through PEFT


def _dense_weight_uses(monkeypatch):
    """Counts, per frozen layer, how often the fused path makes its dense weight (each use of it: one multiply)."""
    from ftlib.speed import fused_lora

    uses, dense_weight = collections.Counter(), fused_lora._dense_weight
    monkeypatch.setattr(fused_lora, "_dense_weight",
                        lambda layer, *arguments: uses.update([layer]) or dense_weight(layer, *arguments))
    return uses


def _assert_same_numbers(model, tokenizer, expected_loss, expected_gradients):
    """The model's loss and gradients on TEXTS are the expected ones (float32 rounding apart)."""
    loss, gradients = _loss_and_gradients(model, tokenizer)
    assert torch.allclose(loss, expected_loss, atol=1e-5)
    assert gradients.keys() == expected_gradients.keys() and gradients
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, expected_gradients[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("mode", [True, "offload", False])
def test_recomputation_leaves_out_the_mlp_output_nobody_reads(tiny_path, mode, monkeypatch):
    """While checkpointing recomputes a Llama layer, down_proj's frozen multiply is left out (its output is only
    added to the residual stream), and the loss and every gradient stay PEFT's; without checkpointing there is
    no recomputation and nothing to leave out."""
    from ftlib import load_model
    from ftlib.speed.fused_lora import fuse_lora_layers

    model, tokenizer = load_model(tiny_path, load_in_4bit=False, dtype=torch.float32, max_seq_length=128)
    model = _lora_with_nonzero_update(model, checkpointing=mode)
    expected = _loss_and_gradients(model, tokenizer)
    fuse_lora_layers(model)
    uses = _dense_weight_uses(monkeypatch)
    _assert_same_numbers(model, tokenizer, *expected)
    recomputed = 1 if mode else 0
    for layer in model.get_base_model().model.layers:
        assert uses[layer.mlp.down_proj.get_base_layer()] == 2  # the forward and backward passes only
        for projection in (layer.self_attn.o_proj, layer.mlp.up_proj):
            assert uses[projection.get_base_layer()] == 2 + recomputed


def test_recomputation_keeps_the_mlp_output_a_norm_reads(tiny_tokenizer, monkeypatch):
    """Gemma 2 normalises the MLP's output before adding it, so the recomputation must write it: down_proj's
    multiply runs in the recomputation too, and the gradients stay PEFT's."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from ftlib.speed.fused_lora import fuse_lora_layers

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id, hidden_size=32,
                          intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16, attn_implementation="eager")
    model = _lora_with_nonzero_update(Gemma2ForCausalLM(config), checkpointing=True)
    expected = _loss_and_gradients(model, tiny_tokenizer)
    fuse_lora_layers(model)
    uses = _dense_weight_uses(monkeypatch)
    _assert_same_numbers(model, tiny_tokenizer, *expected)
    for layer in model.get_base_model().model.layers:
        assert uses[layer.mlp.down_proj.get_base_layer()] == 3  # forward, recomputation, backward


def test_fuse_lora_only_on_a_gpu(tiny_model, tiny_path, monkeypatch):
    """acceleration.fuse_lora leaves a CPU model alone and records what it did on a (pretend) GPU."""
    from ftlib import load_model

    model = _lora(tiny_model[0], True)
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cpu")
    assert acceleration.fuse_lora(model) == 0
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    assert acceleration.fuse_lora(model) == 7 * model.config.num_hidden_layers
    assert "fused_lora" in model.get_base_model().ftlib_acceleration
    monkeypatch.setenv("FTLIB_PLAIN", "1")
    assert acceleration.fuse_lora(_lora(load_model(tiny_path, load_in_4bit=False)[0], True)) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_lora_matches_peft_in_bfloat16_on_cuda(tiny_path):
    """On a GPU in 4-bit with bf16 autocast: the fused loss and gradients agree with PEFT's within bf16 rounding."""
    from ftlib import load_model
    from ftlib.speed.fused_lora import fuse_lora_layers

    model, tokenizer = load_model(tiny_path, load_in_4bit=True, dtype=torch.bfloat16, max_seq_length=128)
    model = _lora_with_nonzero_update(model)
    input_ids, attention_mask, labels = (tensor.cuda() for tensor in _batch(tokenizer, TEXTS))

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        gradients = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return float(loss), gradients

    plain_loss, plain_gradients = run()
    fuse_lora_layers(model)
    loss, gradients = run()
    assert abs(loss - plain_loss) < 1e-2 * abs(plain_loss)
    assert gradients.keys() == plain_gradients.keys() and gradients
    for name, gradient in gradients.items():
        scale = plain_gradients[name].abs().max()
        assert (gradient - plain_gradients[name]).abs().max() <= 0.05 * scale, name


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("nf4_kernel", [True, False])
def test_fused_lora_dequantises_exactly_as_bitsandbytes(tiny_path, double_quant, nf4_kernel, monkeypatch):
    """Each way ftlib de-quantises gives bitsandbytes' own weights, bit for bit, and the backward pass's reuse
    of the block scales changes nothing: the NF4 kernel (on a GPU with Triton), bitsandbytes' C functions (on
    one GPU) or its operators (elsewhere)."""
    import bitsandbytes

    from ftlib import models
    from ftlib.speed import nf4_kernel as kernel_module
    from ftlib.speed.fused_lora import _dequantize_4bit

    if not nf4_kernel:
        monkeypatch.setattr(kernel_module, "_kernel", lambda: None)

    plain_config = models._quantization_config

    def config(load_in_4bit, load_in_8bit, dtype):
        settings = plain_config(load_in_4bit, load_in_8bit, dtype)
        settings.bnb_4bit_use_double_quant = double_quant
        return settings

    monkeypatch.setattr(models, "_quantization_config", config)
    model, _ = models.load_model(tiny_path, load_in_4bit=True, max_seq_length=128)
    weights = [module.weight for module in model.modules()
               if getattr(getattr(module, "weight", None), "quant_state", None) is not None]
    assert len(weights) == 7 * model.config.num_hidden_layers
    assert all(weight.quant_state.nested == double_quant for weight in weights)
    for weight in weights:
        expected = bitsandbytes.functional.dequantize_4bit(weight.data, weight.quant_state)
        dense, scales = _dequantize_4bit(weight.data, weight.quant_state)
        assert torch.equal(dense, expected)
        assert torch.equal(_dequantize_4bit(weight.data, weight.quant_state, scales)[0], expected)


def _nf4_by_the_format(packed, state):
    """An NF4 weight made dense the slow, plain way: high half of each byte first, one scale per block."""
    codes = packed.reshape(-1).long()
    codes = torch.stack([codes >> 4, codes & 15], 1).reshape(-1)[: state.shape.numel()]
    scales = state.absmax
    if state.nested:
        inner = state.state2
        scales = inner.code[scales.long()] * inner.absmax.repeat_interleave(inner.blocksize)[: scales.numel()]
        scales = scales + state.offset
    values = state.code[codes] * scales.repeat_interleave(state.blocksize)[: codes.numel()]
    return values.to(state.dtype).reshape(state.shape)


_NF4_CASES = [((3, 37), 64), ((129, 65), 64), ((129, 65), 128), ((64, 96), 64)]  # partial blocks, several instances


@pytest.mark.parametrize("nested", [True, False])
def test_nf4_kernel_follows_the_4bit_format_in_tritons_interpreter(nested, monkeypatch):
    """ftlib's NF4 kernel, run on the CPU by Triton's interpreter, decodes weights exactly as the format says."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    import bitsandbytes

    from ftlib.speed import nf4_kernel

    kernel = nf4_kernel._build_kernel()
    torch.manual_seed(0)
    for shape, blocksize in _NF4_CASES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            packed, state = bitsandbytes.functional.quantize_4bit(
                torch.randn(*shape, dtype=dtype), blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
            dense, expected = nf4_kernel._launch(kernel, packed, state), _nf4_by_the_format(packed, state)
            assert dense.dtype == dtype and dense.shape == shape
            if dtype == torch.bfloat16:  # the interpreter rounds to bfloat16 by cutting bits; GPUs round to nearest
                assert torch.allclose(dense.float(), expected.float(), rtol=2 ** -7, atol=0)
            else:
                assert torch.equal(dense, expected), (shape, blocksize, dtype)
    fp4_packed, fp4_state = bitsandbytes.functional.quantize_4bit(torch.randn(64, 64), quant_type="fp4")
    assert nf4_kernel._launch(kernel, fp4_packed, fp4_state) is None  # FP4 codes: bitsandbytes de-quantises
    assert nf4_kernel.dequantize(packed, state) is None  # CPU tensors: bitsandbytes de-quantises


def test_nf4_kernel_that_cannot_run_warns_once_and_leaves_it_to_bitsandbytes(monkeypatch):
    """A Triton that cannot compile the kernel (too old, or an unsupported GPU) never stops training."""
    from ftlib.speed import nf4_kernel

    launches = []

    def failing_launch(kernel, packed, state):
        launches.append(packed)
        raise RuntimeError("PassManager::run failed")

    class GpuWeight:
        is_cuda = True

    monkeypatch.setattr(nf4_kernel, "_FAILURES", [])
    monkeypatch.setattr(nf4_kernel, "_kernel", lambda: "compiled kernel")
    monkeypatch.setattr(nf4_kernel, "_launch", failing_launch)
    with pytest.warns(UserWarning, match="NF4 kernel could not run .*PassManager.*bitsandbytes"):
        assert nf4_kernel.dequantize(GpuWeight(), None) is None
    assert nf4_kernel.dequantize(GpuWeight(), None) is None  # no second attempt, no second warning
    assert len(launches) == 1


def test_nf4_kernel_is_launched_directly_only_where_that_gives_tritons_result(monkeypatch):
    """A compiled kernel is launched directly only if its first direct launch writes what Triton's launch wrote;
    a Triton whose compiled kernels take other arguments, or give other numbers, keeps Triton's own launch."""
    from ftlib.speed import nf4_kernel

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
    written = torch.arange(8.0)
    arguments = (torch.zeros(4, dtype=torch.uint8),) * 6 + (written.clone(), 8, 64, 1, False, 64)

    class Compiled:
        function = packed_metadata = None

        def __init__(self, values):
            self.values = values

        def run(self, *launch):
            if self.values is None:
                raise TypeError("function takes exactly 14 arguments")
            launch[9 + 6].copy_(self.values)  # grid (3), stream, function, metadata, 3 hooks, then the arguments

    assert nf4_kernel._launches_directly(Compiled(written), 1, arguments) is not None
    assert nf4_kernel._launches_directly(Compiled(written + 1), 1, arguments) is None
    assert nf4_kernel._launches_directly(Compiled(None), 1, arguments) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("nested", [True, False])
def test_nf4_kernel_dequantises_exactly_as_bitsandbytes_on_cuda(nested):
    """On a GPU the one-pass kernel serves and gives bitsandbytes' own weights, bit for bit: launched by Triton
    the first time for each kind of weight, and directly after that where sizes and pointers allow."""
    import bitsandbytes

    from ftlib.speed import nf4_kernel

    torch.manual_seed(0)
    for shape, blocksize in _NF4_CASES + [((1024, 4096), 64), ((14336, 4096), 64)]:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            packed, state = bitsandbytes.functional.quantize_4bit(
                torch.randn(*shape, dtype=dtype, device="cuda"), blocksize=blocksize, quant_type="nf4",
                compress_statistics=nested)
            expected = bitsandbytes.functional.dequantize_4bit(packed, state)
            for _ in range(2):
                dense = nf4_kernel.dequantize(packed, state)
                assert dense is not None, "the kernel should serve NF4 weights on one CUDA GPU"
                assert torch.equal(dense, expected), (shape, dtype)
            assert torch.equal(dense, _nf4_by_the_format(packed, state))
    launched_directly = [kind for kind, compiled in nf4_kernel._COMPILED.items() if compiled is not None]
    assert {kind[6] for kind in launched_directly} == {torch.float32, torch.float16, torch.bfloat16}


def test_expandable_segments_only_on_cuda_and_never_over_the_users_settings(monkeypatch):
    """ftlib asks for growable CUDA segments unless there is no GPU or the user configured the allocator."""
    calls = []
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", calls.append, raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert acceleration.use_expandable_segments() is False and calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert acceleration.use_expandable_segments() is False and calls == []
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    assert acceleration.use_expandable_segments() is True
    assert calls == ["expandable_segments:True"]


def test_lengths_vary_counts_lengths_after_the_cut():
    from datasets import Dataset

    same = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6]]})
    mixed = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]})
    assert not acceleration.lengths_vary([same, None], max_seq_length=16)
    assert acceleration.lengths_vary([mixed], max_seq_length=16)
    assert not acceleration.lengths_vary([mixed], max_seq_length=3)  # both cut to 3 tokens: one shape
    assert not acceleration.lengths_vary([mixed.select([1])], max_seq_length=16)  # the rows selected, not the table
    assert acceleration.lengths_vary([same, Dataset.from_dict({"input_ids": [[1]]})], max_seq_length=16)


def test_cudnn_attention_is_off_while_varied_lengths_train_and_restored_after(tiny_model, monkeypatch):
    from datasets import Dataset

    model, _ = tiny_model
    mixed = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]})
    same = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6]]})
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with acceleration.attention_suited_to(model, [mixed], 16) as switched:
        assert not switched and torch.backends.cuda.cudnn_sdp_enabled()  # a CPU model: nothing to change
    monkeypatch.setattr(acceleration, "model_device_type", lambda model: "cuda")
    with acceleration.attention_suited_to(model, [same], 16) as switched:
        assert not switched and torch.backends.cuda.cudnn_sdp_enabled()  # one shape: cuDNN's plan is reused
    with pytest.raises(KeyboardInterrupt):
        with acceleration.attention_suited_to(model, [mixed], 16) as switched:
            assert switched and not torch.backends.cuda.cudnn_sdp_enabled()
            raise KeyboardInterrupt  # a stopped run
    assert torch.backends.cuda.cudnn_sdp_enabled()  # put back however the block ended


def test_train_runs_inside_the_attention_choice(tiny_model, monkeypatch, tmp_path):
    """train passes its own train and held-out rows and max_seq_length, and trains inside the block."""
    import contextlib

    from transformers import TrainerCallback

    from ftlib import add_lora, format_dataset, train
    from ftlib.demo import load_headlines

    model, tokenizer = tiny_model
    calls, inside = [], []

    @contextlib.contextmanager
    def spy(model, datasets, max_seq_length):
        calls.append(([len(dataset) for dataset in datasets], max_seq_length))
        inside.append(True)
        yield False
        inside.append(False)

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            inside.append("step" if inside and inside[-1] is True else "step outside")

    monkeypatch.setattr(acceleration, "attention_suited_to", spy)
    data = format_dataset(load_headlines("train")[:12], tokenizer, test_size=0.25, verbose=False)
    train(add_lora(model, r=4), tokenizer, data, max_steps=1, per_device_train_batch_size=2,
          gradient_accumulation_steps=1, max_seq_length=48, callbacks=[Watch()], verbose=False, output_dir=str(tmp_path))
    assert calls == [([9, 3], 48)]
    assert inside[0] is True and "step" in inside and "step outside" not in inside and inside[-1] is False


def test_benchmark_gap_report_finds_the_idle_time_of_the_busiest_stream():
    """The profile's gap report: the compute stream's idle time between kernels, longest gaps first."""
    from types import SimpleNamespace

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run as benchmark
    finally:
        sys.path.remove(str(BENCHMARKS))

    def event(name, start, end, stream=7, device="DeviceType.CUDA"):
        return SimpleNamespace(name=name, device_type=device, device_resource_id=stream,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [event("gemm", 0, 1000), event("gemm", 500, 1500),  # overlapping kernels count once
              event("norm", 4000, 5000), event("adam", 5100, 6000),
              event("Memcpy HtoD", 0, 2000, stream=9),  # the copy stream: less busy, so not the one reported
              event("Optimizer.step#AdamW.step", 0, 6000),  # a range annotation, not a kernel
              event("aten::mm", 0, 6000, device="DeviceType.CPU")]
    gaps = benchmark.stream_gaps(events)
    assert gaps["stream"] == 7 and gaps["span_ms"] == 6.0 and gaps["busy_ms"] == 3.4
    assert gaps["idle_ms"] == 2.6 and gaps["gaps_over_1ms"] == 1 and gaps["idle_in_gaps_over_1ms"] == 2.5
    assert gaps["longest"][0] == {"ms": 2.5, "at_ms": 1.5, "after": "gemm", "before": "norm"}
    assert benchmark.stream_gaps([event("aten::mm", 0, 1, device="DeviceType.CPU")]) == {"error": "no device events"}
