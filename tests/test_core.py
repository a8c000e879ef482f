"""The core path on the tiny model: load_model, add_lora, train (and the errors that name the fix)."""

import pytest
import torch

from ftlib import add_lora, format_dataset, generate, load_model, save, train
from ftlib.demo import load_headlines
from ftlib.errors import FtlibError


def _lora_weights(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters() if "lora_" in name}


def _frozen_weights(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()
            if "lora_" not in name and parameter.dtype.is_floating_point}


@pytest.fixture(scope="module")
def headline_rows():
    return load_headlines("train")[:64]


# load_model ---------------------------------------------------------------------------------------------


def test_demo_alias_and_local_folder_load_the_same_model(tiny_path):
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=256)
    again, _ = load_model(str(tiny_path), load_in_4bit=False)
    assert model.config.model_type == "llama"
    assert next(model.parameters()).dtype == torch.float32  # dtype=None on the CPU means fp32
    assert tokenizer.model_max_length == 256
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    assert model.ftlib_settings["model_name"] == "ftlib-tiny"
    for (name, weight), (_, other) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(weight, other), name


def test_unknown_model_name_offline_says_what_to_do():
    with pytest.raises(FtlibError) as error:
        load_model("no-such-org/no-such-model-xyz", load_in_4bit=False)
    message = str(error.value)
    assert "neither a local folder nor reachable on the Hugging Face Hub" in message
    assert "load_model('./path/to/model')" in message


def test_missing_local_folder_is_named():
    with pytest.raises(FtlibError, match="no folder at .*does-not-exist"):
        load_model("./does-not-exist", load_in_4bit=False)


def test_an_explicit_bfloat16_on_a_gpu_without_it_names_float16(monkeypatch):
    from ftlib.models import _pick_dtype

    # The automatic choice per GPU is tested in tests/test_environment.py with the device query faked.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert _pick_dtype(None, "cpu") == torch.float32
    with pytest.raises(FtlibError, match="does not support bfloat16.*float16"):
        _pick_dtype("bfloat16", "cuda")


def test_4bit_and_8bit_together_is_refused():
    with pytest.raises(FtlibError, match="pick one"):
        load_model("ftlib-tiny", load_in_4bit=True, load_in_8bit=True)


def test_an_explicit_precision_that_contradicts_full_finetuning_names_the_fix(tmp_path):
    with pytest.raises(FtlibError, match="drop load_in_4bit=True for a full fine-tune"):
        load_model("ftlib-tiny", full_finetuning=True, load_in_4bit=True)
    with pytest.raises(FtlibError, match="drop load_in_8bit=True for a full fine-tune"):
        load_model("ftlib-tiny", full_finetuning=True, load_in_8bit=True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(FtlibError, match="leave full_finetuning out.*method='merged_16bit'"):
        load_model(str(adapter), full_finetuning=True)


def test_the_4bit_default_gives_way_to_an_explicit_choice():
    from ftlib.models import _check_precision

    assert _check_precision(None, False, False) is True  # the guide's default: QLoRA
    assert _check_precision(None, True, False) is False  # load_in_8bit=True alone: 8-bit
    assert _check_precision(None, False, True) is False  # full_finetuning=True alone: 16-bit
    assert _check_precision(False, False, False) is False
    model, _ = load_model("ftlib-tiny", full_finetuning=True, max_seq_length=64)
    assert model.ftlib_settings["load_in_4bit"] is False and model.ftlib_settings["full_finetuning"]


def test_options_after_the_model_are_keyword_only(tiny_model):
    model, _ = tiny_model
    with pytest.raises(TypeError):
        load_model("ftlib-tiny", 256)
    with pytest.raises(TypeError):
        add_lora(model, 16)
    with pytest.raises(TypeError):
        add_lora(model, random_state=0)  # the seed is `seed`, as in train and format_dataset


def test_4bit_load_and_a_training_step_on_cpu(headline_rows):
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=True, max_seq_length=128)
    quantized = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(quantized) == 4 * 7  # every projection of the 4 layers is stored in 4 bits
    model = add_lora(model, use_gradient_checkpointing=True)
    before = _lora_weights(model)
    history = train(model, tokenizer, format_dataset(headline_rows[:16], tokenizer), max_steps=2,
                    learning_rate=1e-3, output_dir="/tmp/ftlib-test-4bit")
    after = _lora_weights(model)
    assert len(history.loss) == 2 and all(torch.isfinite(torch.tensor(history.loss)))
    assert any(not torch.equal(before[name], after[name]) for name in before)


# add_lora -----------------------------------------------------------------------------------------------


def test_add_lora_reports_and_trains_only_adapters(tiny_model, capsys):
    model, _ = tiny_model
    model = add_lora(model, r=8, lora_alpha=16)
    trainable, total = model.ftlib_trainable_parameters
    assert f"trainable parameters: {trainable:,} of {total:,}" in capsys.readouterr().out
    assert 0 < trainable < total / 5
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert names and all("lora_" in name for name in names)
    # 7 projections x 4 layers x (A and B)
    assert len(names) == 7 * 4 * 2


@pytest.mark.parametrize("bad", [0, -4, 2.5])
def test_bad_rank_names_the_fix(tiny_model, bad):
    model, _ = tiny_model
    with pytest.raises(FtlibError, match="r must be a positive whole number.*r=16"):
        add_lora(model, r=bad)


def test_unknown_target_module_lists_the_real_ones(tiny_model):
    model, _ = tiny_model
    with pytest.raises(FtlibError, match="q_proj"):
        add_lora(model, target_modules=["query_key_value"])


def test_add_lora_refuses_a_full_finetuning_model():
    model, _ = load_model("ftlib-tiny", full_finetuning=True)
    with pytest.raises(FtlibError, match="full_finetuning=False"):
        add_lora(model)


def test_the_seed_decides_the_adapters_first_weights(tiny_path):
    def first_weights(seed):
        model, _ = load_model(str(tiny_path), load_in_4bit=False, max_seq_length=64)
        return _lora_weights(add_lora(model, seed=seed, use_gradient_checkpointing=False))

    once, again, other = first_weights(1), first_weights(1), first_weights(2)
    assert all(torch.equal(once[name], again[name]) for name in once)
    assert any(not torch.equal(once[name], other[name]) for name in once if "lora_A" in name)


# train ----------------------------------------------------------------------------------------------------


def test_training_changes_lora_weights_only_and_the_loss_falls(tiny_model, headline_rows):
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)
    lora_before, frozen_before = _lora_weights(model), _frozen_weights(model)
    history = train(model, tokenizer, format_dataset(headline_rows, tokenizer), max_steps=30,
                    learning_rate=1e-3, output_dir="/tmp/ftlib-test-train")
    assert history.steps == list(range(1, 31))
    first, last = sum(history.loss[:5]) / 5, sum(history.loss[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    lora_after, frozen_after = _lora_weights(model), _frozen_weights(model)
    assert all(not torch.equal(lora_before[name], lora_after[name]) for name in lora_before if "lora_B" in name)
    assert all(torch.equal(frozen_before[name], frozen_after[name]) for name in frozen_before)
    assert not model.training  # back in inference mode for generate
    assert model.ftlib_training["final_loss"] == history.final_loss


def test_held_out_loss_is_recorded_from_a_split(tiny_model, headline_rows):
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)
    splits = format_dataset(headline_rows, tokenizer, test_size=0.25)
    history = train(model, tokenizer, splits, max_steps=6, eval_steps=3, learning_rate=1e-3,
                    output_dir="/tmp/ftlib-test-eval")
    assert history.eval_steps == [3, 6]
    assert len(history.eval_loss) == 2 and history.eval_loss[1] < history.eval_loss[0]


def test_full_finetuning_updates_the_base_weights(headline_rows):
    model, tokenizer = load_model("ftlib-tiny", full_finetuning=True, max_seq_length=128)
    before = _frozen_weights(model)
    train(model, tokenizer, format_dataset(headline_rows[:16], tokenizer), max_steps=2, learning_rate=1e-4,
          output_dir="/tmp/ftlib-test-full")
    after = _frozen_weights(model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any("q_proj" in name for name in changed)


def test_train_refuses_settings_it_would_ignore(tiny_model, headline_rows):
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)
    rows = format_dataset(headline_rows[:8], tokenizer, verbose=False)
    with pytest.raises(FtlibError, match="keep max_steps.*or num_train_epochs"):
        train(model, tokenizer, rows, max_steps=10, num_train_epochs=1)
    with pytest.raises(FtlibError, match="eval_steps needs held-out data.*eval_dataset="):
        train(model, tokenizer, rows, max_steps=2, eval_steps=1)
    with pytest.raises(FtlibError, match="leave save_steps out"):
        train(model, tokenizer, rows, eval_dataset=rows, max_steps=4, eval_steps=2, save_steps=3,
              early_stopping_patience=2)


def test_raw_rows_are_formatted_automatically(tiny_model, headline_rows):
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)
    history = train(model, tokenizer, headline_rows[:8], max_steps=1, output_dir="/tmp/ftlib-test-raw")
    assert len(history.loss) == 1


@pytest.mark.parametrize("rate", [-1e-4, 0, float("inf")])
def test_bad_learning_rate_names_the_fix(tiny_model, headline_rows, rate):
    model, tokenizer = tiny_model
    with pytest.raises(FtlibError, match="learning_rate must be a positive number.*2e-4"):
        train(model, tokenizer, headline_rows, learning_rate=rate)


def test_empty_dataset_is_refused(tiny_model):
    model, tokenizer = tiny_model
    with pytest.raises(FtlibError, match="empty"):
        train(model, tokenizer, [], max_steps=1)


def test_dataset_without_expected_columns_names_found_and_expected(tiny_model):
    model, tokenizer = tiny_model
    rows = [{"headline": "Acme shares rose", "label": "positive"}]
    with pytest.raises(FtlibError) as error:
        train(model, tokenizer, rows, max_steps=1)
    message = str(error.value)
    assert "headline" in message and "label" in message  # what was found
    assert "question" in message and "answer" in message  # what was expected


# the whole path: train, save, reload, same answers --------------------------------------------------------


def test_saved_adapter_reloads_to_identical_greedy_outputs(tiny_model, headline_rows, tmp_path):
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)
    train(model, tokenizer, format_dataset(headline_rows, tokenizer), max_steps=10, learning_rate=1e-3,
          output_dir=str(tmp_path / "checkpoints"))
    prompts = [row["question"] for row in headline_rows[:4]]
    expected = generate(model, tokenizer, prompts, max_new_tokens=8)
    save(model, tokenizer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded, reloaded_tokenizer = load_model(str(tmp_path / "adapter"), load_in_4bit=False)
    assert generate(reloaded, reloaded_tokenizer, prompts, max_new_tokens=8) == expected


def test_flop_count_takes_the_parameter_count_once(tiny_model):
    """The logged FLOP count is transformers' 6 x tokens x parameters, without recounting every micro-batch."""
    import types

    from ftlib.training.trainer import FtlibTrainer

    model = add_lora(tiny_model[0], use_gradient_checkpointing=False)
    base = model.get_base_model()
    expected_count = base.num_parameters(exclude_embeddings=True)
    calls = []
    base.num_parameters = lambda **options: calls.append(options) or expected_count
    trainer = types.SimpleNamespace(model=model)
    inputs = {"input_ids": torch.ones(2, 37, dtype=torch.long)}
    flops = [FtlibTrainer.floating_point_ops(trainer, inputs) for _ in range(5)]
    assert flops == [6 * 2 * 37 * expected_count] * 5
    assert calls == [{"exclude_embeddings": True}]


def test_model_stays_in_training_mode_without_a_walk_per_micro_batch(tiny_model, headline_rows, monkeypatch):
    """transformers' model.train() before each micro-batch is skipped while the model already trains, not after
    an evaluation (which leaves it in eval mode); every training forward pass still sees training mode."""
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)
    switches, modes = [], []
    real_train = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train",
                        lambda module, mode=True: (switches.append(mode) if module is model else None)
                        or real_train(module, mode))
    # On the first layer, not the whole model: PEFT 0.20 calls the model's forward directly, past its hooks
    model.get_base_model().model.layers[0].register_forward_pre_hook(
        lambda module, arguments: modes.append(module.training) if torch.is_grad_enabled() else None)
    splits = format_dataset(headline_rows[:40], tokenizer, test_size=0.2)
    train(model, tokenizer, splits, max_steps=4, gradient_accumulation_steps=3, eval_steps=2, verbose=False)
    assert len(modes) == 4 * 3 and all(modes)  # 12 micro-batches, all in training mode
    assert switches.count(True) <= 4  # the trainer's own call and one after each of the two evaluations
    assert "train" not in vars(model)  # the stand-in is gone: model.train() is PyTorch's again
