"""Side-by-side fine-tuning benchmark: ftlib's defaults, the plain transformers + PEFT + TRL recipe, Unsloth.

Every run trains in its own Python process, on the same random-initialised checkpoint of a real architecture
(weights don't change speed) and the same token data, with the guide's settings: LoRA r=16 on all seven
projections, batch 2, gradient accumulation 4, learning rate 2e-4, 8-bit AdamW on a GPU. The runs come from
the named plans of plans.toml.

    python benchmarks/run.py --list                        # the plans and their runs
    python benchmarks/run.py --plan qlora_8b --dry-run     # a plan's runs, as the workers would get them
    python benchmarks/run.py --smoke                       # CPU, tiny shape: ftlib and plain agree (CI runs its worker)
    python benchmarks/run.py --plan qlora_8b --budget 540  # GPU: runs in order while the budget lasts
    python benchmarks/report.py                            # benchmarks/README.md's tables from results.json

Figures per run: tokens/s (real, non-padding tokens of an optimizer step over the median step time after
warm-up), peak reserved and allocated GPU memory during training, load time, the loss of every step, and the
loss of the untrained model on one fixed batch (the parity check: same weights, same batch, so every system
must agree within bf16 rounding). A GPU plan's call is appended to benchmarks/results.json (or --out).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # ftlib from this checkout, also when the package is not installed

from ftlib.speed.memory import KNOWN_MODELS  # noqa: E402  (plain Python: imports neither torch nor transformers)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Llama shapes, written out so nothing comes from the Hub (weights are random: speed and memory don't care).
ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
    # the published shapes, as ftlib's memory estimator knows them
    "llama-3.2-1b": KNOWN_MODELS["llama-3.2-1b"],
    "llama-3.1-8b": KNOWN_MODELS["llama-3.1-8b"],
}


def llama_config(shape):
    """A transformers LlamaConfig for one of SHAPES. Example: `llama_config("llama-3.1-8b")`."""
    from transformers import LlamaConfig

    rope = dict(ROPE_LLAMA3, factor=8.0) if shape == "llama-3.1-8b" else dict(ROPE_LLAMA3)
    return LlamaConfig(**SHAPES[shape], max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
                       rope_parameters=rope, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       initializer_range=0.02)


def make_tokenizer(vocab_size, folder):
    """A word-level tokenizer covering every id (<t5> is id 5), with pad/bos/eos and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials)}
    vocab.update({f"<t{index}>": index for index in range(len(specials), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    tokenizer.save_pretrained(folder)


def make_checkpoint(shape, folder):
    """Write a random-initialised bf16 checkpoint (and tokenizer) of `shape` to `folder`; returns seconds."""
    import torch
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in bf16: an 8B model in fp32 would be 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(llama_config(shape))
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    make_tokenizer(model.config.vocab_size, folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------------
# Data: the same token ids for every system.

def make_rows(vocab_size, rows, length, mix, seed=1234):
    """Token-id rows: `mix="fixed"` all `length` long; "variable" spread like instruction data (32..length)."""
    import random

    generator = random.Random(seed)
    out = []
    for _ in range(rows):
        if mix == "fixed":
            size = length
        else:  # log-normal around ~300 tokens with a long tail, as instruction/chat data tends to be
            size = int(min(length, max(32, generator.lognormvariate(5.7, 0.8))))
        out.append([generator.randrange(4, vocab_size) for _ in range(size)])
    return out


# ---------------------------------------------------------------------------------------------------------
# The worker: one configuration, one process.

class _Meter:
    """Counts the tokens the model sees (an embedding pre-hook) and times optimizer steps."""

    def __init__(self, model, pad_id, device, profile_step=None, profile_kind="torch"):
        import torch

        self.torch, self.device, self.pad_id = torch, device, pad_id
        self.pending_real, self.pending_slots = [], []
        self.step_seconds, self.step_tokens, self.step_slots, self.losses = [], [], [], []
        self.completion_lengths = []
        self._started = None
        self.profile_step, self.profile_kind, self.profiler, self.profile_table = profile_step, profile_kind, None, None
        self.profile_gaps = None
        self.hook = model.get_input_embeddings().register_forward_pre_hook(self._count)

    def _count(self, module, args):
        input_ids = args[0] if args else None
        if input_ids is not None and input_ids.dtype in (self.torch.long, self.torch.int):
            self.pending_real.append((input_ids != self.pad_id).sum())
            self.pending_slots.append(input_ids.numel())

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if meter.profile_step is not None and state.global_step == meter.profile_step:
                    meter._start_profiler()
                meter._sync()
                meter._started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                meter._sync()
                if meter.profiler is not None:
                    meter._stop_profiler()
                meter.step_seconds.append(time.perf_counter() - meter._started)
                meter.step_tokens.append(int(sum(int(x) for x in meter.pending_real)))
                meter.step_slots.append(int(sum(meter.pending_slots)))
                meter.pending_real, meter.pending_slots = [], []

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    meter.losses.append(float(logs["loss"]))
                if logs and "completions/mean_length" in logs:  # GRPO: tokens generated per completion this step
                    meter.completion_lengths.append(float(logs["completions/mean_length"]))

        return StepTimer()


    def _start_profiler(self):
        if self.profile_kind == "python":  # where the Python time goes (what a CPU-bound step waits for)
            import cProfile

            self.profiler = cProfile.Profile()
            self.profiler.enable()
            return
        activities = [self.torch.profiler.ProfilerActivity.CUDA]
        if self.profile_kind != "gaps":  # CPU events too (op names in the table), at a cost in CPU time per op
            activities.append(self.torch.profiler.ProfilerActivity.CPU)
        self.profiler = self.torch.profiler.profile(activities=activities)
        self.profiler.start()

    def _stop_profiler(self):
        if self.profile_kind == "python":
            import io
            import pstats

            self.profiler.disable()
            text = io.StringIO()
            pstats.Stats(self.profiler, stream=text).sort_stats("tottime").print_stats(45)
            self.profile_table, self.profiler = text.getvalue()[-12000:], None
            return
        self.profiler.stop()
        try:
            self.profile_gaps = stream_gaps(self.profiler.events())
        except Exception as error:  # noqa: BLE001  (a profiler without device events: report, never fail)
            self.profile_gaps = {"error": f"{type(error).__name__}: {error}"}
        averages = self.profiler.key_averages()
        try:
            self.profile_table = averages.table(sort_by="self_device_time_total", row_limit=45, max_name_column_width=70)
        except (AttributeError, KeyError):  # older PyTorch names the column after CUDA
            self.profile_table = averages.table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=70)
        self.profiler = None


def stream_gaps(events, longest=15):
    """Where the busiest GPU stream (the compute stream) sat idle in a profiled step.

    `events`: torch.profiler's events; device events carry their stream in `device_resource_id` and times in
    microseconds. Returns the stream's busy and idle milliseconds between its first and last kernel, the
    number and total of gaps over 1 ms, and the `longest` gaps with the kernels on either side: the place to
    look when a step takes longer than its kernels add up to.
    """
    kernels = {}
    for event in events:
        if getattr(event, "device_type", None) is None or "CUDA" not in str(event.device_type):
            continue
        if getattr(event, "is_user_annotation", False) or "#" in event.name:  # ranges, not kernels
            continue
        kernels.setdefault(event.device_resource_id, []).append(
            (event.time_range.start, event.time_range.end, event.name))
    if not kernels:
        return {"error": "no device events"}
    stream, runs = max(kernels.items(), key=lambda item: sum(end - start for start, end, _ in item[1]))
    runs.sort()
    gaps, busy, reach, before = [], 0.0, runs[0][0], runs[0][2]
    for start, end, name in runs:
        if start > reach:
            gaps.append((start - reach, reach - runs[0][0], before, name))
        busy += max(0.0, end - max(start, reach))
        if end >= reach:
            reach, before = end, name
    long_gaps = [gap for gap in gaps if gap[0] > 1000]
    return {
        "stream": stream, "span_ms": (reach - runs[0][0]) / 1000, "busy_ms": busy / 1000,
        "idle_ms": sum(gap[0] for gap in gaps) / 1000, "gaps_over_1ms": len(long_gaps),
        "idle_in_gaps_over_1ms": sum(gap[0] for gap in long_gaps) / 1000,
        "longest": [{"ms": round(size / 1000, 2), "at_ms": round(at / 1000, 1), "after": after[:80], "before": next_[:80]}
                    for size, at, after, next_ in sorted(gaps, reverse=True)[:longest]],
    }


def _sft_config(spec, **extra):
    from trl import SFTConfig

    settings = dict(
        output_dir=tempfile.mkdtemp(prefix="bench-"), per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["accumulation"], max_steps=spec["steps"], learning_rate=2e-4,
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=3407,
        data_seed=3407, bf16=spec["gpu"] and spec["dtype"] == "bfloat16", fp16=spec["gpu"] and spec["dtype"] == "float16",
        max_length=spec["length"], dataloader_num_workers=0, optim="adamw_8bit" if spec["gpu"] else "adamw_torch",
    )
    settings.update(extra)
    return SFTConfig(**settings)


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=PROJECTIONS, bias="none",
                      task_type="CAUSAL_LM")


def _bnb_config(dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def load_system(spec):
    """Load and wrap the model the way `spec["system"]` does; returns (model, tokenizer, path_used)."""
    import torch

    dtype = getattr(torch, spec["dtype"])
    quantized = spec["method"] == "qlora"
    folder = spec["checkpoint"]
    if spec["system"] == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=folder, max_seq_length=spec["max_seq_length"], dtype=dtype, load_in_4bit=quantized)
        model = FastLanguageModel.get_peft_model(
            model, r=16, lora_alpha=16, lora_dropout=0, target_modules=PROJECTIONS, bias="none",
            use_gradient_checkpointing="unsloth", random_state=3407)
        return model, tokenizer, "unsloth FastLanguageModel"
    if spec["system"] == "ftlib":
        from ftlib import add_lora, load_model

        if spec["method"] == "full":  # every weight trained, 16-bit, no adapters
            model, tokenizer = load_model(folder, max_seq_length=spec["max_seq_length"], dtype=dtype,
                                          full_finetuning=True)
            from ftlib.speed.acceleration import enable_gradient_checkpointing

            enable_gradient_checkpointing(model, spec.get("checkpointing", True))  # add_lora's step, without adapters
            return model, tokenizer, "ftlib.load_model(full_finetuning=True)"
        model, tokenizer = load_model(folder, max_seq_length=spec["max_seq_length"], dtype=dtype,
                                      load_in_4bit=quantized)
        chosen = {"use_gradient_checkpointing": spec["checkpointing"]} if "checkpointing" in spec else {}
        model = add_lora(model, r=16, lora_alpha=16, **chosen)  # without a choice: add_lora's default
        return model, tokenizer, "ftlib.load_model + add_lora"
    # The plain recipe, as most tutorials write it.
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device_map = {"": 0} if spec["gpu"] else None
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, device_map=device_map, quantization_config=_bnb_config(dtype) if quantized else None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    model.config.use_cache = False
    torch.manual_seed(3407)
    model = get_peft_model(model, _lora_config())
    return model, tokenizer, "transformers + peft (prepare_model_for_kbit_training, reentrant checkpointing)"


def make_pairs(rows, length):
    """DPO rows from token rows: the first half of a row is the prompt, its second half the chosen answer, the
    second half reversed the rejected one, as <tN> words the benchmark's word-level tokenizer reads back one to one:
    prompt + chosen and prompt + rejected are each `length` tokens (the row's length)."""
    pairs = []
    for row in rows:
        half = len(row) // 2
        words = [f"<t{token}>" for token in row]
        pairs.append({"prompt": " ".join(words[:half]), "chosen": " ".join(words[half:]),
                      "rejected": " ".join(reversed(words[half:]))})
    return pairs


def _train_dpo(spec, model, tokenizer, pairs, meter):
    """DPO on the pairs: ftlib's train(method="dpo"), TRL's DPOTrainer (plain), or TRL's DPOTrainer patched by
    Unsloth. LoRA everywhere with ref_model=None: the reference is the same base through a frozen adapter copy.
    The token meter counts the reference's forward passes too, the same way for every system."""
    from datasets import Dataset

    dataset = Dataset.from_list(pairs)
    if spec["system"] == "ftlib":
        from ftlib import train

        train(model, tokenizer, dataset, method="dpo", per_device_train_batch_size=spec["batch"],
              gradient_accumulation_steps=spec["accumulation"], max_steps=spec["steps"], warmup_steps=0,
              learning_rate=5e-6, max_seq_length=spec["length"], output_dir=tempfile.mkdtemp(prefix="bench-"),
              callbacks=[meter.callback()], logging_steps=1, memory_budget_gb=spec.get("memory_budget_gb"))
        return "ftlib.train(method='dpo')"
    if spec["system"] == "unsloth":
        from unsloth import PatchDPOTrainer

        PatchDPOTrainer()
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-"), per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["accumulation"], max_steps=spec["steps"], learning_rate=5e-6,
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=3407,
        bf16=spec["gpu"] and spec["dtype"] == "bfloat16", fp16=spec["gpu"] and spec["dtype"] == "float16",
        max_length=spec["length"], optim="adamw_8bit" if spec["gpu"] else "adamw_torch", gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[meter.callback()])
    from ftlib.training.log_probabilities import plain_log_probabilities_off_gpu

    with plain_log_probabilities_off_gpu(model):  # TRL's log-probability kernel needs Triton, so a GPU
        trainer.train()
    return "trl DPOTrainer" + (" (patched by unsloth)" if spec["system"] == "unsloth" else "")


def make_prompts(rows, length):
    """GRPO prompts from token rows: a row's first `length` tokens as <tN> words, asked as one user message."""
    return [{"prompt": [{"role": "user", "content": " ".join(f"<t{token}>" for token in row[:length])}]} for row in rows]


def even_token_reward(completions, completion_ids, **kwargs):
    """A reward a program computes in microseconds, and that varies within a group: the share of even token ids."""
    return [sum(1 for token in ids if token % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


GRPO_BETA, GRPO_LEARNING_RATE = 0.04, 5e-6  # ftlib's GRPO default beta; a LoRA GRPO rate, the same for both systems


def _train_grpo(spec, model, tokenizer, prompts, meter):
    """GRPO on the prompts: ftlib's train(method="grpo") or TRL's GRPOTrainer (plain), LoRA with beta > 0 (the
    reference through the adapters' frozen copy) and generation through transformers (no vLLM on the GPU host)."""
    from datasets import Dataset

    dataset = Dataset.from_list(prompts)
    generations, completion_length = spec.get("generations", 8), spec.get("completion_length", 256)
    if spec["system"] == "ftlib":
        from ftlib import train

        train(model, tokenizer, dataset, method="grpo", reward_functions=[even_token_reward],
              num_generations=generations, max_completion_length=completion_length, beta=GRPO_BETA,
              per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=spec["accumulation"],
              max_steps=spec["steps"], warmup_steps=0, learning_rate=GRPO_LEARNING_RATE,
              max_seq_length=spec["length"] + completion_length + 16, output_dir=tempfile.mkdtemp(prefix="bench-"),
              callbacks=[meter.callback()], logging_steps=1)
        return "ftlib.train(method='grpo')"
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-"), per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["accumulation"], max_steps=spec["steps"], learning_rate=GRPO_LEARNING_RATE,
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=3407,
        bf16=spec["gpu"] and spec["dtype"] == "bfloat16", fp16=spec["gpu"] and spec["dtype"] == "float16",
        optim="adamw_8bit" if spec["gpu"] else "adamw_torch", gradient_checkpointing=False,
        num_generations=generations, max_completion_length=completion_length, beta=GRPO_BETA)
    trainer = GRPOTrainer(model=model, reward_funcs=[even_token_reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[meter.callback()])
    from ftlib.training.log_probabilities import plain_log_probabilities_off_gpu

    with plain_log_probabilities_off_gpu(model):  # TRL's log-probability kernel needs Triton, so a GPU
        trainer.train()
    return "trl GRPOTrainer"


def _train(spec, model, tokenizer, rows, meter):
    """One training run on `rows` with the system's own trainer path; returns the path description."""
    from datasets import Dataset

    if spec.get("objective") == "dpo":
        return _train_dpo(spec, model, tokenizer, rows, meter)
    if spec.get("objective") == "grpo":
        return _train_grpo(spec, model, tokenizer, rows, meter)
    dataset = Dataset.from_dict({"input_ids": rows})
    if spec["system"] == "ftlib" and spec.get("padding_free"):
        # train does not ask for padding-free batching: TRL's trainer with the settings trainer_settings gives for it
        from ftlib.speed import acceleration

        settings = acceleration.trainer_settings(model, padding_free=True)
        from ftlib.speed.memory_budget import plan_training

        # the layers to recompute, as train chooses them (a padded batch's tokens bound a padding-free one's)
        plan_training(model, [dataset], per_device_train_batch_size=spec["batch"], max_seq_length=spec["length"],
                      optim=None, memory_budget_gb=spec.get("memory_budget_gb"))
        acceleration.fuse_lora(model)
        trainer = _plain_trainer_class(spec["gpu"])(
            model=model, processing_class=tokenizer, train_dataset=dataset,
            args=_sft_config(spec, gradient_checkpointing=False, **settings), callbacks=[meter.callback()])
        with acceleration.attention_suited_to(model, [dataset], spec["length"]):
            trainer.train()
        return f"trl SFTTrainer with ftlib.speed.acceleration.trainer_settings(padding_free=True) = {settings}"
    if spec["system"] == "ftlib":
        from ftlib import train

        train(model, tokenizer, dataset, per_device_train_batch_size=spec["batch"],
              gradient_accumulation_steps=spec["accumulation"], max_steps=spec["steps"], warmup_steps=0,
              max_seq_length=spec["length"], output_dir=tempfile.mkdtemp(prefix="bench-"),
              callbacks=[meter.callback()], logging_steps=1, memory_budget_gb=spec.get("memory_budget_gb"),
              fsdp=spec.get("fsdp"))
        return "ftlib.train" + (f" in {spec['processes']} processes (torchrun)" if spec.get("processes", 1) > 1 else "")
    if spec["system"] == "unsloth":
        from trl import SFTTrainer  # unsloth patched it on import

        trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset,
                             args=_sft_config(spec), callbacks=[meter.callback()])
        trainer.train()
        return "trl SFTTrainer (patched by unsloth)"
    extra = {"gradient_checkpointing": False}  # already set up (reentrant) above
    trainer = _plain_trainer_class(spec["gpu"])(model=model, processing_class=tokenizer, train_dataset=dataset,
                         args=_sft_config(spec, **extra), callbacks=[meter.callback()])
    if trainer.args.fp16:  # else TRL 1.15's bf16 adapters stop float16 training at the first step (see ftlib.training.run)
        from ftlib.training.run import keep_adapters_out_of_bfloat16

        keep_adapters_out_of_bfloat16(model)
    trainer.train()
    return "trl SFTTrainer"


def _plain_trainer_class(gpu):
    """TRL's SFTTrainer; on a CPU its Triton loss kernel cannot run, so the model's own loss stands in."""
    from transformers import Trainer
    from trl import SFTTrainer

    if gpu:
        return SFTTrainer

    class CPUTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return CPUTrainer


def _parity_loss(model, rows, device, dtype):
    """Loss of the (untrained) model on the first 512 tokens of the first row: the same batch everywhere."""
    import torch

    batch = torch.tensor([rows[0][:512]], device=device)
    model.eval()
    with torch.no_grad(), torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
        loss = model(input_ids=batch, labels=batch).loss
    model.train()
    return float(loss)


def _memory(torch):
    if not torch.cuda.is_available():
        return {}
    return {"peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30,
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30}


def _free(torch, model=None):
    import gc

    if model is not None:
        for parameter in model.parameters():
            parameter.grad = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker(spec):
    """Run one configuration and return its figures (a dict). ftlib's options in `spec["off"]` are switched off
    the way a user does it, through FTLIB_SPEED_OFF (ftlib/speed/switches.py), for this run only."""
    from ftlib.speed.switches import OFF_VARIABLE

    before = os.environ.get(OFF_VARIABLE)
    os.environ[OFF_VARIABLE] = ",".join(spec.get("off", ()))
    try:
        return _measure(spec)
    finally:
        if before is None:
            del os.environ[OFF_VARIABLE]
        else:
            os.environ[OFF_VARIABLE] = before


def _measure(spec):
    if spec["system"] == "unsloth":
        import unsloth  # noqa: F401  (must come before transformers to patch it)
    import torch

    result = {"spec": spec}
    if spec["gpu"] and spec.get("processes", 1) > 1:  # this process's own GPU: its memory is what gets measured
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if spec["gpu"] and spec.get("memory_cap_gb"):
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(spec["memory_cap_gb"] * 2**30 / total)
    device = "cuda" if spec["gpu"] else "cpu"
    started = time.perf_counter()
    model, tokenizer, loaded_by = load_system(spec)
    if spec["gpu"]:
        torch.cuda.synchronize()
    result["load_seconds"] = time.perf_counter() - started
    result["loaded_by"] = loaded_by
    result["load_memory"] = _memory(torch)
    result["acceleration"] = list(getattr(model, "ftlib_acceleration", []) or
                                  getattr(getattr(model, "get_base_model", lambda: None)(), "ftlib_acceleration", []))
    if spec["system"] == "ftlib":
        from ftlib.speed.acceleration import gradient_checkpointing_mode

        result["checkpointing"] = gradient_checkpointing_mode(model)  # the report's estimate needs the mode used
    vocab = model.get_input_embeddings().weight.shape[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dtype = getattr(torch, spec["dtype"])
    processes = spec.get("processes", 1)  # each process takes its own rows of every global batch
    rows = make_rows(vocab, spec["batch"] * spec["accumulation"] * spec["steps"] * processes, spec["length"],
                     spec["mix"])
    result["parity_loss"] = _parity_loss(model, rows, device, dtype)
    if spec.get("objective") == "dpo":  # the same token rows, as preference pairs of `length` tokens a side
        rows = make_pairs(rows, spec["length"])
    if spec.get("objective") == "grpo":  # one prompt of `length` tokens per group of `generations` completions
        rows = make_prompts(rows[:len(rows) // spec.get("generations", 8) + 1], spec["length"])
    # With profile=True the last step runs under torch.profiler and is left out of the timings.
    meter = _Meter(model, pad_id, device, profile_step=spec["steps"] - 1 if spec.get("profile") else None,
                   profile_kind=spec["profile"] if spec.get("profile") in ("python", "gaps") else "torch")

    _free(torch)
    if spec["gpu"]:
        torch.cuda.reset_peak_memory_stats()
    result["trained_by"] = _train(spec, model, tokenizer, rows, meter)
    result.update(_memory(torch))
    if spec["system"] == "ftlib":  # the layers train chose to recompute and offload (add_lora's "auto")
        result["memory_plan"] = (getattr(model, "ftlib_settings", None) or {}).get("memory_plan")
    warm, end = spec["warmup"], spec["steps"] - 1 if spec.get("profile") else None
    measured = meter.step_seconds[warm:end] or meter.step_seconds
    tokens = meter.step_tokens[warm:end] or meter.step_tokens
    median = statistics.median(measured)
    result.update(
        step_seconds=meter.step_seconds, step_tokens=meter.step_tokens, step_slots=meter.step_slots,
        median_step_seconds=median, tokens_per_second=statistics.mean(tokens) * processes / median,
        processes=processes,  # tokens/s counts every process: this one's tokens x processes (fixed-length rows)
        first_loss=meter.losses[0] if meter.losses else None, last_loss=meter.losses[-1] if meter.losses else None,
        losses=meter.losses, profile=meter.profile_table, profile_gaps=meter.profile_gaps,
    )
    if spec.get("objective") == "grpo":  # what limits GRPO: completions generated a second, optimizer steps a second
        lengths = meter.completion_lengths[warm:end] or meter.completion_lengths
        completions = spec["batch"] * spec["accumulation"]
        result.update(completion_lengths=meter.completion_lengths, optimizer_steps_per_second=1 / median,
                      generated_tokens_per_second=statistics.mean(lengths) * completions / median if lengths else None)
    if spec.get("longest"):
        result["longest"] = _longest_sequence(spec, model, tokenizer, meter)
    return result


def _longest_sequence(spec, model, tokenizer, meter):
    """Longest sequence that trains one step at batch 1 (doubling, then one bisection), under the memory cap."""
    import torch

    tried = {}
    ok, failed = spec["length"], None
    length = spec["length"] * 2
    while length <= spec["longest"]:
        if not _one_step(spec, model, tokenizer, meter, length, tried):
            failed = length
            break
        ok, length = length, length * 2
    if failed:
        middle = (ok + failed) // 2 // 1024 * 1024
        if middle > ok and _one_step(spec, model, tokenizer, meter, middle, tried):
            ok = middle
    _free(torch, model)
    return {"longest_ok": ok, "first_failed": failed, "tried": tried}


def _one_step(spec, model, tokenizer, meter, length, tried):
    import torch

    step = dict(spec, batch=1, accumulation=1, steps=1, length=length, mix="fixed")
    rows = make_rows(model.get_input_embeddings().weight.shape[0], 1, length, "fixed", seed=length)
    _free(torch, model)
    if spec["gpu"]:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        _train(step, model, tokenizer, rows, meter)
        tried[length] = {"ok": True, "seconds": time.perf_counter() - started, **_memory(torch)}
        return True
    except torch.OutOfMemoryError as error:
        tried[length] = {"ok": False, "error": str(error).splitlines()[0][:200]}
    except RuntimeError as error:  # some kernels report running out of memory as a plain RuntimeError
        if "out of memory" not in str(error).lower():
            raise
        tried[length] = {"ok": False, "error": str(error).splitlines()[0][:200]}
    _free(torch, model)
    return False


# ---------------------------------------------------------------------------------------------------------
# The plans: data in plans.toml, made into complete, checked run specs here.

PLANS_FILE = HERE / "plans.toml"
SYSTEMS = ("ftlib", "plain", "unsloth")
RUN_KEYS = {"system", "shape", "method", "mix", "length", "batch", "accumulation", "steps", "warmup", "dtype", "gpu",
            "memory_cap_gb", "max_seq_length", "longest", "checkpointing", "padding_free", "off", "profile", "repeat",
            "memory_budget_gb", "objective", "processes", "fsdp", "generations", "completion_length"}
CHOICES = {"system": SYSTEMS, "shape": tuple(SHAPES), "method": ("qlora", "lora16", "full"), "mix": ("fixed", "variable"),
           "dtype": ("bfloat16", "float16", "float32"), "profile": ("torch", "gaps", "python"),
           "objective": ("sft", "dpo", "grpo")}


def make_spec(system, shape, method="qlora", mix="fixed", length=2048, **extra):
    """One run's complete settings, named after what sets it apart. Example: `make_spec("ftlib", "tiny", gpu=False)`."""
    spec = dict(system=system, shape=shape, method=method, mix=mix, length=length, batch=2, accumulation=4,
                steps=6, warmup=2, dtype="bfloat16", gpu=True, max_seq_length=length)
    spec.update(extra)
    spec["name"] = "/".join(str(part) for part in (
        system, shape, method, spec.get("objective") if spec.get("objective") in ("dpo", "grpo") else "", mix, spec["length"], spec["dtype"],
        f"cap{spec['memory_cap_gb']}" if spec.get("memory_cap_gb") else "",
        "no-" + "-no-".join(spec["off"]) if spec.get("off") else "",
        f"ckpt-{spec['checkpointing']}" if "checkpointing" in spec else "",
        f"budget{spec['memory_budget_gb']}" if spec.get("memory_budget_gb") else "",
        f"profile-{spec['profile']}" if spec.get("profile") else "",
        f"x{spec['processes']}" if spec.get("processes", 1) > 1 else "", "fsdp" if spec.get("fsdp") else "",
        "padding-free" if spec.get("padding_free") else "", f"run{spec['repeat']}" if spec.get("repeat") else "")
        if part)
    return spec


def load_plans(path=PLANS_FILE):
    """{name: {"about": text, "runs": [spec, ...]}} from plans.toml, every run checked.

    Example: `load_plans()["smoke"]["runs"][0]["name"]  # 'ftlib/tiny/lora16/fixed/256/float32'`
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from ftlib.speed.switches import names

    data = tomllib.loads(Path(path).read_text())
    plans = {}
    for name, plan in data["plans"].items():
        specs = []
        for index, run in enumerate(plan["runs"], 1):
            settings = {**data.get("defaults", {}), **plan.get("common", {}), **run}
            where = f"{Path(path).name}: plan {name!r}, run {index}"
            unknown = sorted(set(settings) - RUN_KEYS)
            if unknown or "system" not in settings or "shape" not in settings:
                raise SystemExit(f"{where}: unknown keys {unknown} or no system/shape; the keys are {sorted(RUN_KEYS)}")
            for key, allowed in CHOICES.items():
                if key in settings and settings[key] not in allowed:
                    raise SystemExit(f"{where}: {key} = {settings[key]!r}, use one of {', '.join(allowed)}")
            if (settings.get("off") or settings.get("padding_free") or settings.get("memory_budget_gb")
                    or settings.get("processes", 1) > 1 or settings.get("fsdp") or settings.get("method") == "full"):
                if settings["system"] != "ftlib":
                    raise SystemExit(f"{where}: off, padding_free, memory_budget_gb, processes, fsdp and method 'full' "
                                     f"are ftlib's options, not {settings['system']}'s")
                names(",".join(settings.get("off", ())))  # an unknown option name stops here, with the list
            system, shape = settings.pop("system"), settings.pop("shape")
            specs.append(make_spec(system, shape, **settings))
        plans[name] = {"about": plan.get("about", ""), "runs": specs}
    return plans


def plan(name):
    """The runs of the plan `name`, highest priority first. Example: `plan("smoke")`."""
    plans = load_plans()
    if name not in plans:
        raise SystemExit(f"unknown plan {name!r}: use one of {', '.join(plans)} (benchmarks/plans.toml)")
    return plans[name]["runs"]


def select_runs(specs, numbers):
    """The runs `numbers` ("1,7-11", 1-based) picks, in the plan's order. Example: `select_runs(plan("smoke"), "1-2")`."""
    chosen = set()
    for part in numbers.split(","):
        first, _, last = part.strip().partition("-")
        chosen.update(range(int(first), int(last or first) + 1))
    if not chosen or min(chosen) < 1 or max(chosen) > len(specs):
        raise SystemExit(f"--runs {numbers}: this plan has runs 1 to {len(specs)}")
    return [spec for number, spec in enumerate(specs, 1) if number in chosen]


# ---------------------------------------------------------------------------------------------------------
# The runner.

def versions():
    """Versions of the packages that matter here (None when not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "liger-kernel",
                    "unsloth", "unsloth_zoo", "triton", "datasets"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def gpu_name():
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except Exception:  # noqa: BLE001  (report, never fail, on an odd device)
        return "unknown"


def record(out_path, call, index=None):
    """Write `call` into the "calls" list of the JSON file `out_path` (made if missing): appended, or in place of
    the call at `index`; returns its index. The file keeps every call, so it is the benchmark's history."""
    path = Path(out_path)
    data = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {"calls": []}
    calls = data.setdefault("calls", [])
    if index is None:
        calls.append(call)
        index = len(calls) - 1
    else:
        calls[index] = call
    path.write_text(json.dumps(data, indent=1) + "\n")
    return index


def run_plan(specs, out_path, budget_seconds, workdir, keep_going=True):
    """Run each spec in its own process, in order, while the time budget lasts; record the call as runs finish."""
    started = time.perf_counter()
    call = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu_name(),
            "versions": versions(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "runs": [], "not_run": [], "checkpoints": {}}
    index = record(out_path, call)
    checkpoints = {}
    for spec in specs:
        left = budget_seconds - (time.perf_counter() - started)
        need = {"tiny": 5, "llama-3.2-1b": 40, "llama-3.1-8b": 70}[spec["shape"]] + (60 if spec.get("longest") else 0)
        if left < need + (60 if spec["shape"] not in checkpoints and spec["shape"] != "tiny" else 0):
            call["not_run"].append({"name": spec["name"], "why": f"time budget: {left:.0f} s left"})
            continue
        if spec["shape"] not in checkpoints:
            folder = Path(workdir) / spec["shape"]
            if not (folder / "config.json").is_file():
                seconds = make_checkpoint(spec["shape"], folder)
                call["checkpoints"][spec["shape"]] = round(seconds, 1)
            checkpoints[spec["shape"]] = str(folder)
        spec = dict(spec, checkpoint=checkpoints[spec["shape"]])
        result_file = Path(workdir) / "result.json"
        result_file.unlink(missing_ok=True)
        print(f"--- {spec['name']} ({left:.0f} s left)", flush=True)
        t0 = time.perf_counter()
        try:
            process = subprocess.run([*launcher(spec), __file__, "--worker", json.dumps(spec), str(result_file)],
                                     timeout=max(10, left), capture_output=True, text=True)
            log = (process.stdout + process.stderr)[-3000:]
            if result_file.is_file():
                result = json.loads(result_file.read_text())
            else:
                result = {"spec": spec, "error": f"exit {process.returncode}", "log_tail": log}
        except subprocess.TimeoutExpired:
            result = {"spec": spec, "error": "timed out (time budget)"}
        result["process_seconds"] = time.perf_counter() - t0
        call["runs"].append(result)
        print(summary_line(result), flush=True)
        if "error" in result:
            print(result.get("log_tail", "")[-1500:], flush=True)
        record(out_path, call, index)
        if "error" in result and not keep_going:
            break
    record(out_path, call, index)
    return call


def launcher(spec):
    """The command that starts a run's worker: Python, or torchrun with one process per GPU (`processes`)."""
    processes = spec.get("processes", 1)
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]


def summary_line(result):
    spec = result["spec"]
    if "error" in result:
        return f"{spec['name']}: ERROR {result['error']}"
    memory = (f"{result['peak_reserved_gb']:.2f} GB reserved, {result['peak_allocated_gb']:.2f} allocated"
              if "peak_reserved_gb" in result else "CPU")
    gaps = result.get("profile_gaps") or {}
    idle = (f", profiled step: GPU busy {gaps['busy_ms']:.0f} of {gaps['span_ms']:.0f} ms, {gaps['gaps_over_1ms']} gaps "
            f"over 1 ms ({gaps['idle_in_gaps_over_1ms']:.0f} ms)" if "busy_ms" in gaps else "")
    return (f"{spec['name']}: {result['tokens_per_second']:,.0f} tok/s, {memory}, load {result['load_seconds']:.0f} s, "
            f"loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}, parity {result['parity_loss']:.5f}, "
            f"steps {' '.join(f'{seconds:.2f}' for seconds in result['step_seconds'])} s{idle}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="smoke", help="a plan of plans.toml (--list shows them); default: smoke")
    parser.add_argument("--smoke", action="store_true", help="the same as --plan smoke: CPU, tiny shape, minutes")
    parser.add_argument("--list", action="store_true", help="list the plans and their runs, then stop")
    parser.add_argument("--dry-run", action="store_true", help="print the runs that would start, as JSON, then stop")
    parser.add_argument("--runs", default=None, help="only these runs of the plan, 1-based: 1,7-11")
    parser.add_argument("--only", default=None, help="only these systems, comma-separated: ftlib,plain,unsloth")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole plan (default 540)")
    parser.add_argument("--out", default=None, help="the call is appended to this file (default: results.json here "
                        "for a GPU plan, ftlib-benchmark-cpu.json in the temporary folder for a CPU one)")
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec, result_file = json.loads(args.worker[0]), args.worker[1]
        result = worker(spec)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one result, rank 0's
            Path(result_file).write_text(json.dumps(result))
        return 0
    if args.list:
        for name, content in load_plans().items():
            print(f"{name}: {content['about']}")
            for number, spec in enumerate(content["runs"], 1):
                print(f"  {number:>2}. {spec['name']}")
        return 0
    specs = plan("smoke" if args.smoke else args.plan)
    if args.runs:
        specs = select_runs(specs, args.runs)
    if args.only:
        keep = set(args.only.split(","))
        specs = [spec for spec in specs if spec["system"] in keep]
    if args.dry_run:
        for spec in specs:
            print(json.dumps(spec))
        return 0
    on_gpu = any(spec["gpu"] for spec in specs)
    out = args.out or (HERE / "results.json" if on_gpu else Path(tempfile.gettempdir()) / "ftlib-benchmark-cpu.json")
    workdir = args.workdir or tempfile.mkdtemp(prefix="ftlib-bench-")
    try:
        call = run_plan(specs, out, args.budget, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"recorded in {out}")
    errors = [run for run in call["runs"] if "error" in run]
    return 1 if errors and not on_gpu else 0  # a CPU plan is a check: any error fails it


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    sys.path.insert(0, str(HERE))
    sys.exit(main())
