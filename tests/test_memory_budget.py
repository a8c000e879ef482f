"""Recomputation chosen by a memory budget (ftlib/speed/memory_budget.py), on the CPU.

The estimate answers for partial plans (k of N layers recomputed, m inputs offloaded); the chooser picks the
fewest recomputed layers that fit and refuses a budget below the leanest plan with the fix; and the math is
unchanged: with k of N layers recomputed, loss and gradients equal the full-recomputation and the
no-recomputation paths.
"""

import copy

import pytest
import torch

from ftlib import add_lora, format_dataset, load_model, train
from ftlib.demo import load_headlines
from ftlib.errors import FtlibError
from ftlib.speed import acceleration, memory
from ftlib.speed.memory import estimate_memory
from ftlib.speed.memory_budget import (RecomputationPlan, choose_layers, longest_row, plan_recomputation,
                                       plan_training)

EIGHT_B = "llama-3.1-8b"


# estimate_memory for a partial plan -------------------------------------------------------------------------


def test_whole_plans_equal_the_modes():
    for mode, recomputed, offloaded in ((False, 0, 0), (True, 32, 0), ("offload", 32, 32)):
        by_mode = estimate_memory(EIGHT_B, "qlora", use_gradient_checkpointing=mode)
        by_count = estimate_memory(EIGHT_B, "qlora", use_gradient_checkpointing=bool(recomputed),
                                   recomputed_layers=recomputed, offloaded_layers=offloaded)
        assert by_count.total == by_mode.total, mode
        assert by_mode.details["recomputed_layers"] == recomputed and by_mode.details["offloaded_layers"] == offloaded


def _parts_of_one_layer(tokens=2 * 2048, hidden=4096, intermediate=14336, vocab=128256):
    """One 8B layer's input, its working set (with the de-quantised largest weight) and the loss's working set."""
    layer_input = tokens * hidden * 2
    working_set = (tokens * (memory.HIDDEN_TERMS * hidden + memory.INTERMEDIATE_TERMS * intermediate) * 2
                   + intermediate * hidden * 2)
    loss = min(tokens, 4096) * min(vocab, 32768) * 2 + tokens * hidden * memory.LOSS_HIDDEN_BYTES
    return layer_input, working_set, loss


def test_each_recomputed_layer_saves_its_working_set_less_its_input():
    layer_input, working_set, loss = _parts_of_one_layer()
    kept_layer = working_set - min(working_set, loss) / 32
    activations = [estimate_memory(EIGHT_B, "qlora", recomputed_layers=k, offloaded_layers=0).activations
                   for k in range(33)]
    for k in range(31):  # from none to all but one recomputed the peak is at the loss
        assert activations[k] - activations[k + 1] == pytest.approx(kept_layer - layer_input, rel=1e-9), k
    assert activations[32] == pytest.approx(32 * layer_input + max(working_set, loss), rel=1e-9)
    assert all(later <= earlier for earlier, later in zip(activations, activations[1:]))


def test_each_offloaded_input_beyond_the_two_in_flight_saves_one_input():
    layer_input, _, _ = _parts_of_one_layer()
    activations = [estimate_memory(EIGHT_B, "qlora", recomputed_layers=32, offloaded_layers=m).activations
                   for m in range(33)]
    assert activations[0] == activations[1] == activations[2]  # the two return buffers stay on the GPU
    for m in range(2, 32):
        assert activations[m] - activations[m + 1] == pytest.approx(layer_input, rel=1e-9)
    partial = estimate_memory(EIGHT_B, "qlora", recomputed_layers=20, offloaded_layers=10).activations
    assert partial == pytest.approx(
        estimate_memory(EIGHT_B, "qlora", recomputed_layers=20, offloaded_layers=0).activations - 8 * layer_input)


@pytest.mark.parametrize("arguments, fix", [
    ({"recomputed_layers": 33}, "from 0 to 32"),
    ({"recomputed_layers": 2.5}, "from 0 to 32"),
    ({"recomputed_layers": 4, "offloaded_layers": 5}, "recomputed_layers=4"),
    ({"use_gradient_checkpointing": False, "offloaded_layers": 1}, "recomputed_layers=0"),
])
def test_impossible_plans_name_the_fix(arguments, fix):
    with pytest.raises(FtlibError, match=fix):
        estimate_memory(EIGHT_B, "qlora", **arguments)


# the chooser ------------------------------------------------------------------------------------------------


def _costs(k, m):
    """8 layers: 10 GB with none recomputed, each recomputed layer 1 GB less, each offloaded input 0.1 GB less."""
    return 10 - k - 0.1 * m


@pytest.mark.parametrize("target, plan", [(12, (0, 0)), (10, (0, 0)), (6, (4, 0)), (5.5, (5, 0)), (2, (8, 0)),
                                          (1.95, (8, 1)), (1.35, (8, 7)), (1.25, (8, 8)), (1.1, None)])
def test_chooser_picks_the_fewest_recomputed_layers_then_the_fewest_offloaded_inputs(target, plan):
    assert choose_layers(8, _costs, target) == plan


def test_chooser_without_offloading_stops_at_every_layer_recomputed():
    assert choose_layers(8, _costs, 2) == (8, 0)
    assert choose_layers(8, _costs, 1.95, allow_offload=False) is None


def test_plans_for_an_8b_model_follow_the_budget():
    plans = {budget: plan_recomputation(EIGHT_B, "qlora", memory_budget_gb=budget)
             for budget in (140, 40, 24, 20, 15, 12, 8)}
    assert plans[140].recomputed_layers == 0 and plans[140].use_gradient_checkpointing is False
    recomputed = [plans[budget].recomputed_layers for budget in (140, 40, 24, 20, 15, 12, 8)]
    assert recomputed == sorted(recomputed) and 0 < plans[15].recomputed_layers < 32  # less memory, more recomputed
    assert plans[8].recomputed_layers == 32 and plans[8].offloaded_layers > 0
    for budget, plan in plans.items():  # each fits with the margin, and one layer fewer would not
        assert plan.estimated_gb <= 0.9 * budget
        if 0 < plan.recomputed_layers < 32:
            fewer = estimate_memory(EIGHT_B, "qlora", recomputed_layers=plan.recomputed_layers - 1,
                                    offloaded_layers=0)
            assert fewer.total_gb > 0.9 * budget
    assert str(plans[15]).startswith(f"recomputing {plans[15].recomputed_layers} of 32 layers to fit 15.0 GB")


def test_a_budget_below_the_leanest_plan_names_the_fix():
    with pytest.raises(FtlibError, match="per_device_train_batch_size=1"):
        plan_recomputation(EIGHT_B, "qlora", memory_budget_gb=5)
    with pytest.raises(FtlibError, match=r"load_model\(\.\.\., load_in_4bit=True\)"):
        plan_recomputation(EIGHT_B, "lora", memory_budget_gb=15)
    with pytest.raises(FtlibError, match="max_seq_length=1024") as raised:
        plan_recomputation(EIGHT_B, "qlora", memory_budget_gb=5, per_device_train_batch_size=1)
    assert "per_device_train_batch_size=1" not in str(raised.value)  # already there
    leanest = plan_recomputation(EIGHT_B, "qlora", memory_budget_gb=5, explicit_budget=False)  # the GPU's own
    assert (leanest.recomputed_layers, leanest.offloaded_layers, leanest.fits) == (32, 32, False)
    assert "may not fit" in str(leanest)
    with pytest.raises(FtlibError, match="memory_budget_gb"):
        plan_recomputation(EIGHT_B, "qlora", memory_budget_gb=0)


# the math is unchanged --------------------------------------------------------------------------------------


def _deeper_model():
    """A random 6-layer Llama, as an extra shape beside ftlib-tiny's 4 layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    return LlamaForCausalLM(config).float()


def _loss_and_gradients(model, input_ids):
    model.train()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                 if parameter.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), gradients


@pytest.mark.parametrize("shape", ["ftlib-tiny", "deeper"])
def test_k_of_n_layers_recomputed_give_the_same_loss_and_gradients(shape):
    if shape == "deeper":
        base = _deeper_model()
    else:
        base, _ = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    layers = base.config.num_hidden_layers
    # dropout: the recomputation draws the same mask
    model = add_lora(base, r=8, lora_alpha=16, lora_dropout=0.1, use_gradient_checkpointing="auto")
    assert acceleration.gradient_checkpointing_mode(model) == "auto"
    input_ids = torch.randint(3, base.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    results = {}
    for recomputed, offloaded in [(layers, 0), (0, 0), (1, 0), (layers // 2, 1), (layers - 1, 2), (layers, layers)]:
        acceleration.checkpoint_layers(model, recomputed, offloaded)
        flags = [layer.gradient_checkpointing for layer in model.get_base_model().model.layers]
        assert flags == [index < recomputed for index in range(layers)]
        torch.manual_seed(7)  # the same dropout masks in every plan
        results[recomputed, offloaded] = _loss_and_gradients(model, input_ids)
    assert acceleration.gradient_checkpointing_mode(model) == "auto"  # the next train call chooses again
    full_loss, full_gradients = results[layers, 0]
    assert full_gradients and all("lora_" in name for name in full_gradients)
    for plan, (loss, gradients) in results.items():
        assert torch.allclose(loss, full_loss, atol=1e-6), plan
        assert gradients.keys() == full_gradients.keys(), plan
        for name, gradient in gradients.items():
            assert torch.allclose(gradient, full_gradients[name], atol=1e-6, rtol=1e-5), (plan, name)


# train ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rows():
    _, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    return format_dataset(load_headlines("train")[:16], tokenizer, verbose=False)


def _budget_between(model, rows, recomputed):
    """A budget whose plan recomputes exactly `recomputed` layers: between that plan's estimate and one fewer's."""
    from ftlib.speed.memory_budget import estimate_options, model_method

    config = model.get_base_model().config
    options = estimate_options(model, 2, longest_row([rows], 128), None)
    fits, fewer = (estimate_memory(config, model_method(model), recomputed_layers=k, **options).total_gb
                   for k in (recomputed, recomputed - 1))
    return (fits + fewer) / 2 / 0.9  # the plan must fit the budget less the 10% margin


def _train(model, tokenizer, rows, **options):
    return train(model, tokenizer, rows, max_steps=3, learning_rate=1e-3, warmup_steps=0,
                 output_dir="/tmp/ftlib-test-budget", **options)


def test_train_recomputes_what_the_budget_needs_with_the_same_losses(tiny_model, tiny_rows, capsys):
    model, tokenizer = tiny_model
    forced = add_lora(copy.deepcopy(model), r=8, use_gradient_checkpointing=True)
    model = add_lora(model, r=8, use_gradient_checkpointing="auto")
    budget = _budget_between(model, tiny_rows, recomputed=2)
    history = _train(model, tokenizer, tiny_rows, memory_budget_gb=budget)
    assert f"recomputing 2 of 4 layers to fit {budget:.1f} GB" in capsys.readouterr().out
    plan = model.ftlib_settings["memory_plan"]
    assert history.memory_plan == plan and (plan["recomputed_layers"], plan["offloaded_layers"]) == (2, 0)
    assert [layer.gradient_checkpointing for layer in model.get_base_model().model.layers] == [True, True, False, False]
    every_layer = _train(forced, tokenizer, tiny_rows)
    assert history.loss == pytest.approx(every_layer.loss, abs=1e-5)


def test_train_on_a_cpu_without_a_budget_recomputes_every_layer_and_says_nothing(tiny_model, tiny_rows, capsys):
    model, tokenizer = tiny_model
    model = add_lora(model, r=8, use_gradient_checkpointing="auto")
    history = _train(model, tokenizer, tiny_rows)
    assert "recomputing" not in capsys.readouterr().out
    assert history.memory_plan is None and "memory_plan" not in model.ftlib_settings
    assert all(layer.gradient_checkpointing for layer in model.get_base_model().model.layers)


def test_a_budget_too_small_stops_train_before_any_weight_changes(tiny_model, tiny_rows):
    model, tokenizer = tiny_model
    model = add_lora(model, r=8, use_gradient_checkpointing="auto")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    with pytest.raises(FtlibError, match="per_device_train_batch_size=1"):
        _train(model, tokenizer, tiny_rows, memory_budget_gb=0.1)  # less than the CUDA context alone
    forced = add_lora(load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)[0], r=8,
                      use_gradient_checkpointing=False)
    with pytest.raises(FtlibError, match="use_gradient_checkpointing='auto'"):
        _train(forced, tokenizer, tiny_rows, memory_budget_gb=0.1)
    with pytest.raises(FtlibError, match="memory_budget_gb"):
        _train(model, tokenizer, tiny_rows, memory_budget_gb=-1)
    assert all(torch.equal(before[name], parameter) for name, parameter in model.named_parameters())


def test_the_plan_reads_as_one_line():
    plan = RecomputationPlan(recomputed_layers=32, offloaded_layers=20, num_layers=32, memory_budget_gb=8,
                             estimated_gb=7.1, budget_from="free GPU memory")
    assert str(plan) == ("recomputing 32 of 32 layers, 20 of their inputs in CPU memory, to fit 8.0 GB of free GPU "
                         "memory (estimated peak 7.1 GB)")
    assert plan.use_gradient_checkpointing == "partial" and plan.as_dict()["line"] == str(plan)


def test_plan_training_leaves_a_forced_mode_alone(tiny_model, tiny_rows):
    model = add_lora(tiny_model[0], r=8, use_gradient_checkpointing=True)
    assert plan_training(model, [tiny_rows], per_device_train_batch_size=2, max_seq_length=128, optim=None) is None
    assert acceleration.gradient_checkpointing_mode(model) is True


def test_each_recomputed_layer_keeps_less_for_the_backward_pass():
    """What the forward pass saves for the backward pass shrinks with every layer recomputed, as the estimate says."""
    model = add_lora(_deeper_model(), r=8, use_gradient_checkpointing="auto")
    input_ids = torch.randint(3, 256, (2, 64), generator=torch.Generator().manual_seed(2))
    saved = []
    for recomputed in range(7):
        acceleration.checkpoint_layers(model, recomputed, 0)
        sizes = []
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(lambda tensor: sizes.append(tensor.nbytes) or tensor,
                                                      lambda tensor: tensor):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        saved.append(sum(sizes))
    assert all(later < earlier for earlier, later in zip(saved, saved[1:])), saved
    assert saved[6] < 0.5 * saved[0]


def test_without_an_explicit_budget_the_gpus_memory_is_the_budget_and_too_little_only_warns(tiny_model, tiny_rows,
                                                                                              monkeypatch):
    from ftlib.speed import memory_budget

    model = add_lora(tiny_model[0], r=8, use_gradient_checkpointing="auto")
    options = dict(per_device_train_batch_size=2, max_seq_length=128, optim=None, on_gpu=True)
    monkeypatch.setattr(memory_budget, "gpu_budget_gb", lambda: 80.0)
    roomy = memory_budget.plan_for_model(model, **options)
    assert (roomy.recomputed_layers, roomy.budget_from) == (0, "free GPU memory")
    assert "to fit 80.0 GB of free GPU memory" in str(roomy)
    monkeypatch.setattr(memory_budget, "gpu_budget_gb", lambda: 0.1)
    with pytest.warns(UserWarning, match="may not fit"):
        cramped = memory_budget.plan_for_model(model, **options)
    assert (cramped.recomputed_layers, cramped.offloaded_layers, cramped.fits) == (4, 4, False)
    assert memory_budget.plan_for_model(model, **dict(options, on_gpu=False)) is None  # a CPU: nothing changes


def test_a_model_the_estimate_does_not_know_keeps_every_layer_recomputed(tiny_model, monkeypatch):
    from ftlib.speed import memory_budget

    model = add_lora(tiny_model[0], r=8, use_gradient_checkpointing="auto")
    known = memory_budget.estimate_options
    monkeypatch.setattr(memory_budget, "estimate_options",
                        lambda *arguments: dict(known(*arguments), target_modules=("c_attn",)))  # GPT-2's name
    with pytest.warns(UserWarning, match="memory_budget_gb is not applied.*c_attn"):
        plan = memory_budget.plan_for_model(model, per_device_train_batch_size=2, max_seq_length=128, optim=None,
                                            memory_budget_gb=16)
    assert plan is None
