"""Side-by-side fine-tuning benchmark: ftlib's defaults, the plain transformers + PEFT + TRL recipe, Unsloth.

Every configuration trains in its own Python process, on the same random-initialised checkpoint of a real
architecture (weights don't change speed) and the same token data, with the guide's settings: LoRA r=16 on
all seven projections, batch 2, gradient accumulation 4, learning rate 2e-4, 8-bit AdamW on a GPU.

    python benchmarks/run.py --smoke              # CPU, tiny shape, a few seconds a process (CI runs it)
    python benchmarks/run.py --plan main          # GPU: the grid, highest priority first, within --budget
    python benchmarks/run.py --report results.json  # rebuild the README table from saved results

Figures per run: tokens/s (real, non-padding tokens of an optimizer step over the median step time after
warm-up), peak reserved and allocated GPU memory during training, load time, first and last loss, and the
loss of the untrained model on one fixed batch (the parity check: same weights, same batch, so every
system must agree within bf16 rounding).
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


def _switch_off(names):
    """Benchmark-only: turn off some of ftlib's speed options (to measure what each one brings)."""
    from ftlib.speed import acceleration

    if "fused_lora" in names:
        acceleration.fuse_lora = lambda model: 0
    if "liger" in names:
        acceleration.liger_available = lambda: False
    if "direct_dequant" in names:  # 4-bit weights de-quantised through bitsandbytes' operators, not its C functions
        from ftlib.speed import fused_lora

        fused_lora._native_dequantizers = lambda: None
    if "nf4_kernel" in names:  # 4-bit weights de-quantised by bitsandbytes' kernels, not ftlib's one-pass kernel
        from ftlib import nf4_kernel

        nf4_kernel._kernel = lambda: None
    if "siblings" in names:  # each fused projection computed on its own, not q/k/v and gate/up together
        from ftlib.speed import fused_lora

        fused_lora.SIBLING_NAMES = ()
    if "unread_outputs" in names:  # down_proj's frozen multiply also in the recomputation, whose output no one reads
        from ftlib.speed import fused_lora

        fused_lora.UNREAD_WHEN_RECOMPUTED = set()
    if "torch_rms_norm" in names:  # Liger's RMSNorm kernel instead of PyTorch's
        acceleration.TORCH_RMS_NORM_MODELS = set()
    if "prefetch" in names:  # offloaded inputs copied back when their layer's backward starts, not a layer early
        from ftlib.speed.offloaded_checkpoint import _ParkedInput

        _ParkedInput.prefetch_earlier = lambda parked, in_use: None
    if "nan_guard" in names:  # train's check of the gradients before each optimizer step (one sync a step)
        from ftlib.training import safety

        safety.NonFiniteLossGuard.on_pre_optimizer_step = lambda guard, *args, **kwargs: None
    if "cudnn_attention" in names:  # PyTorch's SDPA then picks flash or memory-efficient attention instead
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)


def _compile_layers(model):
    """Experiment: torch.compile each decoder layer (one graph shared by all layers of the same shape)."""
    import torch

    torch._dynamo.config.cache_size_limit = 64
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.model.layers:
        layer.compile()


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

        _switch_off(spec.get("off", ()))

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


def _train(spec, model, tokenizer, rows, meter):
    """One training run on `rows` with the system's own trainer path; returns the path description."""
    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": rows})
    if spec["system"] == "ftlib" and spec.get("padding_free"):
        # ftlib.train with the padding-free settings it gets from acceleration.trainer_settings(padding_free=True)
        from ftlib.speed import acceleration

        settings = acceleration.trainer_settings(model, padding_free=True)
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
              callbacks=[meter.callback()], logging_steps=1)
        return "ftlib.train"
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
    """Run one configuration and return its figures (a dict)."""
    if spec["system"] == "unsloth":
        import unsloth  # noqa: F401  (must come before transformers to patch it)
    import torch

    result = {"spec": spec}
    if spec["gpu"] and spec.get("memory_cap_gb"):
        total = torch.cuda.get_device_properties(0).total_memory
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
    rows = make_rows(vocab, spec["batch"] * spec["accumulation"] * spec["steps"], spec["length"], spec["mix"])
    result["parity_loss"] = _parity_loss(model, rows, device, dtype)
    # With profile=True the last step runs under torch.profiler and is left out of the timings.
    meter = _Meter(model, pad_id, device, profile_step=spec["steps"] - 1 if spec.get("profile") else None,
                   profile_kind=spec["profile"] if spec.get("profile") in ("python", "gaps") else "torch")
    if spec.get("compile"):
        _compile_layers(model)

    _free(torch)
    if spec["gpu"]:
        torch.cuda.reset_peak_memory_stats()
    result["trained_by"] = _train(spec, model, tokenizer, rows, meter)
    result.update(_memory(torch))
    warm, end = spec["warmup"], spec["steps"] - 1 if spec.get("profile") else None
    measured = meter.step_seconds[warm:end] or meter.step_seconds
    tokens = meter.step_tokens[warm:end] or meter.step_tokens
    median = statistics.median(measured)
    result.update(
        step_seconds=meter.step_seconds, step_tokens=meter.step_tokens, step_slots=meter.step_slots,
        median_step_seconds=median, tokens_per_second=statistics.mean(tokens) / median,
        first_loss=meter.losses[0] if meter.losses else None, last_loss=meter.losses[-1] if meter.losses else None,
        losses=meter.losses, profile=meter.profile_table, profile_gaps=meter.profile_gaps,
    )
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
# The plans: which configurations, in priority order.

def _spec(system, shape, method="qlora", mix="fixed", length=2048, **extra):
    spec = dict(system=system, shape=shape, method=method, mix=mix, length=length, batch=2, accumulation=4,
                steps=5, warmup=2, dtype="bfloat16", gpu=True, max_seq_length=length)
    spec.update(extra)
    spec["name"] = "/".join(str(part) for part in (
        system, shape, method, mix, spec["length"], spec["dtype"],
        f"cap{spec['memory_cap_gb']}" if spec.get("memory_cap_gb") else "",
        "no-" + "-no-".join(spec["off"]) if spec.get("off") else "",
        f"ckpt-{spec['checkpointing']}" if "checkpointing" in spec else "",
        "compiled" if spec.get("compile") else "", f"profile-{spec['profile']}" if spec.get("profile") else "",
        "padding-free" if spec.get("padding_free") else "", f"run{spec['repeat']}" if spec.get("repeat") else "")
        if part)
    return spec


SYSTEMS = ("ftlib", "plain", "unsloth")


def plan(name):
    """The configurations of a plan, highest priority first. Example: `plan("smoke")`."""
    eight, one = "llama-3.1-8b", "llama-3.2-1b"
    if name == "smoke":
        specs = [_spec(system, "tiny", method="lora16", mix=mix, length=256, steps=3, warmup=1, dtype="float32",
                       gpu=False) for system in ("ftlib", "plain") for mix in ("fixed", "variable")]
        return specs + [_spec("ftlib", "tiny", method="lora16", mix="variable", length=256, steps=3, warmup=1,
                              dtype="float32", gpu=False, padding_free=True)]
    if name == "main":
        specs = [_spec(system, eight, steps=4) for system in SYSTEMS]
        specs += [_spec("ftlib", eight, checkpointing="offload", steps=4)]
        specs += [_spec(system, one, steps=4) for system in SYSTEMS]
        specs += [_spec("ftlib", eight, mix="variable", padding_free=True, steps=4)]
        specs += [_spec(system, eight, mix="variable", steps=4) for system in ("plain", "unsloth")]
        specs += [_spec(system, eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1, max_seq_length=65536,
                        longest=65536) for system in SYSTEMS]
        return specs
    if name == "explore":  # what each option brings, with a profile of one step of ftlib and of Unsloth
        specs = [_spec("unsloth", eight, steps=6, warmup=2, profile=True),
                 _spec("ftlib", eight, steps=6, warmup=2, profile=True),
                 _spec("ftlib", eight, checkpointing="offload", steps=5),
                 _spec("ftlib", eight, steps=5, off=["fused_lora"]),
                 _spec("plain", eight, steps=5)]
        specs += [_spec("ftlib", one, mix="variable", padding_free=True, steps=10, warmup=3),
                  _spec("ftlib", one, mix="variable", steps=10, warmup=3),
                  _spec("plain", one, mix="variable", steps=10, warmup=3)]
        return specs
    if name == "explore2":  # what limits ftlib (a CPU-bound step): Python profile, lean fused LoRA, compile
        return [_spec("ftlib", eight, steps=5, profile="python"),
                _spec("ftlib", eight, steps=6, warmup=3, compile=True, off=["liger"]),
                _spec("ftlib", eight, steps=5, off=["fused_lora"]),
                _spec("ftlib", eight, steps=5, checkpointing="offload"),
                _spec("ftlib", eight, steps=6, warmup=3, compile=True, off=["liger", "fused_lora"])]
    if name == "next":  # offloading checkpointing as the default, against Unsloth and plain; the free-GPU runs
        specs = [_spec(system, eight, steps=6, warmup=2) for system in SYSTEMS]
        specs += [_spec("ftlib", eight, steps=6, warmup=2, checkpointing=True)]
        specs += [_spec(system, eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1, max_seq_length=65536,
                        longest=65536) for system in SYSTEMS]
        return specs
    if name == "next2":  # a second look at the default (with a GPU profile), the float16 fix, the rest of the grid
        specs = [_spec("ftlib", eight, steps=6, warmup=2, profile=True)]
        specs += [_spec(system, eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1, max_seq_length=65536,
                        longest=65536) for system in ("ftlib", "plain")]
        specs += [_spec(system, one, steps=6, warmup=2) for system in SYSTEMS]
        specs += [_spec(system, eight, method="lora16", steps=5) for system in SYSTEMS]
        specs += [_spec(system, one, mix="variable", steps=8, warmup=3) for system in SYSTEMS]
        specs += [_spec("ftlib", one, mix="variable", steps=8, warmup=3, off=["cudnn_attention"])]
        return specs
    if name == "rest":  # the 8B trio with the copy back one layer early; variable lengths beside plain and Unsloth
        specs = [_spec(system, eight, steps=6, warmup=2) for system in SYSTEMS]
        specs += [_spec("ftlib", eight, steps=6, warmup=2, checkpointing=True)]
        specs += [_spec(system, one, mix="variable", steps=8, warmup=3) for system in SYSTEMS]
        specs += [_spec("ftlib", one, mix="variable", steps=8, warmup=3, off=["cudnn_attention"])]
        specs += [_spec(system, eight, steps=6, warmup=2, repeat=2) for system in ("ftlib", "unsloth")]
        return specs + [_spec("ftlib", eight, steps=6, warmup=2, profile=True)]
    if name == "prefetch":  # the copy back a layer early, on and off, beside Unsloth, twice; lengths-aware attention
        specs = []
        for repeat in (1, 2):
            specs += [_spec("ftlib", eight, steps=6, warmup=2, repeat=repeat),
                      _spec("ftlib", eight, steps=6, warmup=2, repeat=repeat, off=["prefetch"]),
                      _spec("unsloth", eight, steps=6, warmup=2, repeat=repeat)]
        specs += [_spec("ftlib", one, mix="variable", steps=8, warmup=3),
                  _spec("ftlib", eight, mix="variable", padding_free=True, steps=6, warmup=2)]
        return specs + [_spec("ftlib", eight, steps=6, warmup=2, profile=True)]
    if name == "final":  # the 8B trio with fixed return buffers; variable lengths with lengths-aware attention
        specs = [_spec(system, eight, steps=6, warmup=2) for system in SYSTEMS]
        specs += [_spec("ftlib", eight, steps=6, warmup=2, checkpointing=True)]
        specs += [_spec(system, one, mix="variable", steps=8, warmup=3) for system in SYSTEMS]
        return specs + [_spec(system, eight, steps=6, warmup=2, repeat=2) for system in ("ftlib", "unsloth")]
    if name == "gaps":  # where ftlib's GPU waits in a step (gap report of the profile), beside Unsloth's
        specs = [_spec(system, eight, steps=5, warmup=2, profile="gaps") for system in ("ftlib", "unsloth")]
        specs += [_spec("ftlib", eight, steps=5, warmup=2, profile="gaps", off=["nan_guard"])]
        specs += [_spec(system, eight, steps=6, warmup=2) for system in SYSTEMS]
        return specs + [_spec("ftlib", eight, steps=6, warmup=2, off=["nan_guard"])]
    if name == "launch":  # the C-function de-quantiser and PyTorch's RMSNorm, each on and off, beside Unsloth and plain
        specs = []
        for repeat in (1, 2):
            specs += [_spec("ftlib", eight, steps=6, warmup=2, repeat=repeat),
                      _spec("ftlib", eight, steps=6, warmup=2, repeat=repeat, off=["torch_rms_norm"]),
                      _spec("ftlib", eight, steps=6, warmup=2, repeat=repeat, off=["direct_dequant", "torch_rms_norm"]),
                      _spec("unsloth", eight, steps=6, warmup=2, repeat=repeat)]
            specs += [_spec("plain", eight, steps=6, warmup=2)] if repeat == 1 else []
        return specs
    if name == "lean":  # fewer kernels per projection (float32 gradients, block scales reused): the trio, twice.
        # Its call at 23:28 also had ftlib keep the adapters' bfloat16 casts between optimizer steps (removed since)
        # in run1 and run2, and ran the committed form once more, as "no-kept_casts" (a switch removed with it).
        specs = []
        for repeat in (1, 2):
            specs += [_spec("ftlib", eight, steps=6, warmup=2, repeat=repeat),
                      _spec("unsloth", eight, steps=6, warmup=2, repeat=repeat)]
            specs += [_spec("plain", eight, steps=6, warmup=2)] if repeat == 1 else []
        return specs
    if name == "kernel":  # ftlib's one-pass NF4 kernel on and off, alternately, beside plain and Unsloth; then a
        # gap report of each. The calls at 00:29 and 00:36 UTC ran earlier orders of these runs (results.json notes)
        specs = []
        for repeat in (1, 2):
            specs += [_spec("ftlib", eight, steps=6, warmup=2, repeat=repeat),
                      _spec("ftlib", eight, steps=6, warmup=2, repeat=repeat, off=["nf4_kernel"])]
            specs += [_spec("plain" if repeat == 1 else "unsloth", eight, steps=6, warmup=2)]
        return specs + [_spec("ftlib", eight, steps=5, warmup=2, profile="gaps", off=off)
                        for off in ([], ["nf4_kernel"])]
    if name == "siblings":  # sibling projections computed together (q/k/v, gate/up) on and off, twice, beside
        # plain and Unsloth; then the guide's run on a free GPU's terms (float16, 15 GiB)
        specs = []
        for repeat in (1, 2):
            specs += [_spec("ftlib", eight, steps=6, warmup=2, repeat=repeat),
                      _spec("ftlib", eight, steps=6, warmup=2, repeat=repeat, off=["siblings"])]
            specs += [_spec("plain" if repeat == 1 else "unsloth", eight, steps=6, warmup=2)]
        return specs + [_spec("ftlib", eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1)]
    if name == "grouped":  # the committed form three times (siblings together, the NF4 kernel launched directly),
        # beside plain once and Unsloth twice
        order = [("ftlib", 1), ("plain", None), ("unsloth", 1), ("ftlib", 2), ("unsloth", 2), ("ftlib", 3)]
        return [_spec(system, eight, steps=6, warmup=2, repeat=repeat) for system, repeat in order]
    if name == "unread":  # the recomputation without down_proj's frozen multiply, three times, beside plain, Unsloth
        # twice and the form before it (off=["unread_outputs"]); then the guide's run on a free GPU's terms
        order = [("ftlib", 1, []), ("plain", None, []), ("unsloth", 1, []), ("ftlib", 1, ["unread_outputs"]),
                 ("ftlib", 2, []), ("unsloth", 2, []), ("ftlib", 3, [])]
        specs = [_spec(system, eight, steps=6, warmup=2, repeat=repeat, off=off) for system, repeat, off in order]
        return specs + [_spec("ftlib", eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1)]
    if name == "unread2":  # the same form on another machine: `grouped`'s runs, then a gap report of one step
        return plan("grouped") + [_spec("ftlib", eight, steps=5, warmup=2, profile="gaps")]
    if name == "unread3":  # a third machine: twice beside plain and Unsloth; then the longest sequence that fits on a
        # free GPU's terms (float16, 15 GiB, batch 1)
        order = [("ftlib", 1), ("plain", None), ("unsloth", 1), ("ftlib", 2)]
        specs = [_spec(system, eight, steps=6, warmup=2, repeat=repeat) for system, repeat in order]
        return specs + [_spec("ftlib", eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1,
                              max_seq_length=65536, longest=65536)]
    if name == "longest":  # the longest sequence on a free GPU's terms once large inputs come back only when needed
        # (offloaded_checkpoint.EARLY_COPY_SHARE), then the 8B case once (where the early copy stays on)
        return [_spec("ftlib", eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1, max_seq_length=65536,
                      longest=65536), _spec("ftlib", eight, steps=6, warmup=2)]
    if name == "unsloth":  # a second call when the first could not import Unsloth
        return [_spec("unsloth", eight, steps=4), _spec("unsloth", one, steps=4)]
    if name == "more":
        specs = [_spec(system, eight, dtype="float16", memory_cap_gb=15, steps=3, warmup=1, max_seq_length=131072,
                       longest=131072) for system in SYSTEMS]
        specs += [_spec(system, eight, method="lora16") for system in SYSTEMS]
        specs += [_spec(system, one, mix="variable") for system in SYSTEMS]
        specs += [_spec(system, one, method="lora16") for system in SYSTEMS]
        return specs
    raise SystemExit(f"unknown plan {name!r}: use smoke, main, more, next, next2, rest, prefetch, final, gaps, launch, lean, kernel, siblings, grouped, unread, unread2, unread3, longest, explore, explore2 or unsloth")


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


def run_plan(specs, out_path, budget_seconds, workdir, keep_going=True):
    """Run each spec in its own process, in order, while the time budget lasts; save results as they come."""
    started = time.perf_counter()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu_name(),
               "versions": versions(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "runs": [], "not_run": [], "checkpoints": {}}
    checkpoints = {}
    for spec in specs:
        left = budget_seconds - (time.perf_counter() - started)
        need = {"tiny": 5, "llama-3.2-1b": 40, "llama-3.1-8b": 70}[spec["shape"]] + (60 if spec.get("longest") else 0)
        if left < need + (60 if spec["shape"] not in checkpoints and spec["shape"] != "tiny" else 0):
            results["not_run"].append({"name": spec["name"], "why": f"time budget: {left:.0f} s left"})
            continue
        if spec["shape"] not in checkpoints:
            folder = Path(workdir) / spec["shape"]
            if not (folder / "config.json").is_file():
                seconds = make_checkpoint(spec["shape"], folder)
                results["checkpoints"][spec["shape"]] = round(seconds, 1)
            checkpoints[spec["shape"]] = str(folder)
        spec = dict(spec, checkpoint=checkpoints[spec["shape"]])
        result_file = Path(workdir) / "result.json"
        result_file.unlink(missing_ok=True)
        print(f"--- {spec['name']} ({left:.0f} s left)", flush=True)
        t0 = time.perf_counter()
        try:
            process = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), str(result_file)],
                                     timeout=max(10, left), capture_output=True, text=True)
            log = (process.stdout + process.stderr)[-3000:]
            if result_file.is_file():
                result = json.loads(result_file.read_text())
            else:
                result = {"spec": spec, "error": f"exit {process.returncode}", "log_tail": log}
        except subprocess.TimeoutExpired:
            result = {"spec": spec, "error": "timed out (time budget)"}
        result["process_seconds"] = time.perf_counter() - t0
        results["runs"].append(result)
        print(summary_line(result), flush=True)
        if "error" in result:
            print(result.get("log_tail", "")[-1500:], flush=True)
        Path(out_path).write_text(json.dumps(results, indent=1))
        if "error" in result and not keep_going:
            break
    Path(out_path).write_text(json.dumps(results, indent=1))
    return results


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
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run: tiny shape, seconds")
    parser.add_argument("--plan", default=None, help="smoke, main or more")
    parser.add_argument("--only", default=None, help="comma-separated systems to keep (ftlib,plain,unsloth)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole plan")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--report", nargs="*", default=None, help="results files to merge into README.md")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec, result_file = json.loads(args.worker[0]), args.worker[1]
        result = worker(spec)
        Path(result_file).write_text(json.dumps(result))
        return 0
    if args.report is not None:
        from report import write_report

        write_report([Path(p) for p in args.report] or [HERE / "results.json"], HERE / "README.md")
        return 0
    specs = plan("smoke" if args.smoke or not args.plan else args.plan)
    if args.only:
        keep = set(args.only.split(","))
        specs = [spec for spec in specs if spec["system"] in keep]
    workdir = args.workdir or tempfile.mkdtemp(prefix="ftlib-bench-")
    try:
        results = run_plan(specs, args.out, args.budget, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    errors = [run for run in results["runs"] if "error" in run]
    return 1 if errors and (args.smoke or args.plan == "smoke") else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    sys.path.insert(0, str(HERE))
    sys.exit(main())
