"""Reasoning with GRPO: `train(model, tokenizer, prompts, method="grpo", reward_functions=[...])` on TRL's GRPOTrainer.

GRPO (group relative policy optimisation) learns from rewards instead of answers. For each prompt the model
writes `num_generations` completions (a group); every reward function scores every completion; a completion
is pushed up by how far its total reward sits above its group's mean, and down when below. So a group whose
completions all score the same teaches nothing: the task must be within reach, or the reward must give
partial credit (see ftlib/training/rewards.py and `diagnose`).

ftlib trains LoRA adapters on the policy. The reference that the KL term (`beta`) keeps the policy near is the
policy as it started: TRL copies the adapters into a frozen "ref" adapter before the first step (for fresh
adapters that is the base model itself, adapters off), and `train` removes that copy afterwards, so the model
holds only its own adapters, as before. `evaluate_rewards` measures a model on held-out prompts with the same
reward functions, greedily, so before and after can be compared.
"""

import inspect
from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer

from ftlib.checks import check_positive, check_range
from ftlib.errors import FtlibError
from ftlib.training.log_probabilities import plain_log_probabilities_off_gpu
from ftlib.training.methods import Method
from ftlib.training.rewards import completion_text

# The GRPO defaults train(method="grpo") uses where its argument is None. They suit one small GPU (a T4, a 1B
# model with LoRA); the CPU demo in notebook 11 sets smaller ones.
NUM_GENERATIONS = 8  # 4-16 completions per prompt: more give a steadier group mean, cost generation time
MAX_COMPLETION_LENGTH = 256  # tokens a completion may use: room to reason; the time a step takes grows with it
# 0.0 is TRL's default: no reference pass, less memory and time, but nothing keeps the policy from drifting and
# no KL is logged. 0.04 (the GRPO paper's value) keeps it near where it started, for one extra forward pass of
# the same model (adapters switched) per step; 0.001-0.1 typical.
BETA = 0.04
TEMPERATURE = 1.0  # sampling temperature of the completions (TRL's default); lower for a model that writes noise
REFERENCE_ADAPTER = "ref"  # the name TRL gives its frozen copy of the adapters
# Columns TRL passes to every reward function itself, so a reward function may ask for them without a dataset column.
GIVEN_TO_REWARDS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                    "environments"}


@dataclass
class FtlibGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig, which takes `max_length` as every method's config does and checks the group size first."""

    # train passes max_seq_length to every method; here a prompt and its completion must fit in it together.
    max_length: int | None = field(default=None, metadata={"help": "Longest prompt + completion, in tokens."})

    def __post_init__(self):
        completions = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if completions % self.num_generations:
            low, high = _fitting_generations(completions)
            raise FtlibError(
                f"num_generations={self.num_generations} does not divide the {completions} completions of one step "
                f"(per_device_train_batch_size={self.per_device_train_batch_size} x gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps}), so a group would be split between steps: use num_generations="
                f"{low}{f' or {high}' if high else ''}, or a batch x accumulation that is a multiple of "
                f"{self.num_generations}"
            )
        if self.max_length is not None and self.max_completion_length >= self.max_length:
            raise FtlibError(
                f"max_completion_length={self.max_completion_length} leaves no room for the prompt within "
                f"max_seq_length={self.max_length}: lower max_completion_length, or load the model with a larger "
                "max_seq_length"
            )
        super().__post_init__()


def _fitting_generations(completions):
    """The largest divisor of `completions` of at least 2, and the next multiple-friendly choice above it, if any."""
    divisors = [count for count in range(2, completions + 1) if completions % count == 0]
    return (divisors[-1], None) if len(divisors) == 1 else (divisors[-2], divisors[-1])


class FtlibGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer; it refuses reward functions that need a column the prompts lack, and writes no model card."""

    def __init__(self, *args, reward_funcs=None, train_dataset=None, **kwargs):
        for dataset in (train_dataset, kwargs.get("eval_dataset")):
            if dataset is not None:
                _check_reward_columns(reward_funcs, dataset.column_names)
        super().__init__(*args, reward_funcs=reward_funcs, train_dataset=train_dataset, **kwargs)

    def create_model_card(self, *args, **kwargs):
        """Write no README.md: output_dir may hold the user's own, and `ftlib.save` writes the card beside the weights."""


def _check_reward_columns(reward_functions, columns):
    """Refuse a reward function whose required argument is neither given by TRL nor a column of the prompts."""
    for function in reward_functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            continue  # a builtin or C function: nothing to read
        missing = [parameter.name for parameter in parameters
                   if parameter.default is inspect.Parameter.empty
                   and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
                   and parameter.name not in GIVEN_TO_REWARDS and parameter.name not in columns]
        if missing:
            raise FtlibError(
                f"the reward function {_name(function)} needs {', '.join(repr(name) for name in missing)}, but the "
                f"prompts have only the columns {sorted(columns)}: add a column named {missing[0]!r} to every row "
                "(e.g. {'question': ..., 'answer': '7'}), or use a reward function that does not need it"
            )


def _name(function):
    return getattr(function, "__name__", type(function).__name__)


def check_reward_functions(reward_functions):
    """A non-empty list of callables, or FtlibError saying what to pass."""
    if callable(reward_functions):
        reward_functions = [reward_functions]
    if not isinstance(reward_functions, (list, tuple)) or not reward_functions or not all(
            callable(function) for function in reward_functions):
        raise FtlibError(
            f"method='grpo' needs reward_functions, a list of functions that score completions, got "
            f"{reward_functions!r:.120}: e.g. reward_functions=[format_reward, exact_answer_reward] from "
            "ftlib.training.rewards"
        )
    return list(reward_functions)


def grpo_settings(options, model=None):
    """GRPOConfig's own fields from train's options, each checked (None = the defaults above)."""
    check_reward_functions(options.get("reward_functions"))
    generations = options.get("num_generations")
    generations = NUM_GENERATIONS if generations is None else generations
    check_positive("num_generations", generations, f"{NUM_GENERATIONS} (4-16)")
    if generations < 2:
        raise FtlibError(f"num_generations={generations}: GRPO compares completions of one prompt with each other, so "
                         f"it needs at least 2; try num_generations={NUM_GENERATIONS} (4-16)")
    length = options.get("max_completion_length")
    length = MAX_COMPLETION_LENGTH if length is None else length
    check_positive("max_completion_length", length, f"{MAX_COMPLETION_LENGTH} (64-1024 tokens)")
    beta = options.get("beta")
    beta = BETA if beta is None else beta
    check_range("beta", beta, f"{BETA} (0.001-0.1), or 0.0 for no reference model", low=0)
    temperature = options.get("temperature")
    temperature = TEMPERATURE if temperature is None else temperature
    check_range("temperature", temperature, f"{TEMPERATURE} (0.5-1.0)", low=0, low_open=True, high=2)
    return {
        "num_generations": generations,
        "temperature": temperature,
        "max_completion_length": length,
        "beta": beta,
        # transformers' generate reads the cache setting from the generation config; train turns the model's own
        # off for the training passes, and generation without a cache recomputes every token's past each step.
        "generation_kwargs": {"use_cache": True},
        "log_completions": False,  # it prints a table of completions through rich at every log
    }


def reward_keywords(model, options):
    return {"reward_funcs": check_reward_functions(options.get("reward_functions"))}


def drop_reference_adapter(model):
    """Remove the frozen copy of the adapters that GRPOTrainer adds when beta > 0: the model keeps only its own."""
    adapters = getattr(model, "peft_config", None)
    if not adapters or REFERENCE_ADAPTER not in adapters or len(adapters) < 2:
        return
    if getattr(model, "active_adapter", None) == REFERENCE_ADAPTER:
        model.set_adapter(next(name for name in adapters if name != REFERENCE_ADAPTER))
    model.delete_adapter(REFERENCE_ADAPTER)


def prepare_prompts(dataset, eval_dataset, tokenizer, max_seq_length):
    """Prompts as GRPO reads them: a "prompt" column (a chat conversation when the tokenizer has a chat template),
    every other column kept for the reward functions. Rows may carry "question" or "prompt"; a DatasetDict's
    "test" split becomes the held-out prompts."""
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise FtlibError(f"the DatasetDict has splits {list(dataset)} but no 'train': pass dataset['<name>'] instead")
        eval_dataset = dataset["test"] if eval_dataset is None and "test" in dataset else eval_dataset
        dataset = dataset["train"]
    chat = bool(getattr(tokenizer, "chat_template", None))
    train_prompts = _as_prompts(dataset, chat, "prompts")
    return train_prompts, (_as_prompts(eval_dataset, chat, "eval_dataset") if eval_dataset is not None else None)


def _as_prompts(rows, chat, name):
    from datasets import Dataset

    if isinstance(rows, Dataset):
        rows = rows.to_list()
    if not isinstance(rows, (list, tuple)) or not all(isinstance(row, dict) for row in rows):
        raise FtlibError(f"{name} must be rows like {{'question': ..., 'answer': ...}} (a list of dicts or a Dataset), "
                         f"got {type(rows).__name__}: e.g. load_arithmetic('train') from ftlib.demo.arithmetic")
    if not rows:
        raise FtlibError(f"{name} is empty: GRPO needs at least one prompt")
    prompts = []
    for index, row in enumerate(rows):
        text = row.get("prompt", row.get("question"))
        if not (isinstance(text, str) and text.strip()) and not (isinstance(text, list) and text):
            raise FtlibError(f"row {index} of {name} has no prompt: give every row a non-empty 'question' (or "
                             f"'prompt') to answer, got the columns {sorted(row)}")
        if isinstance(text, str) and chat:
            text = [{"role": "user", "content": text}]
        prompts.append({**{key: value for key, value in row.items() if key not in ("question", "prompt")},
                        "prompt": text})
    return Dataset.from_list(prompts)


GRPO = Method(
    "grpo",
    config_class=lambda: FtlibGRPOConfig,
    trainer_class=lambda: FtlibGRPOTrainer,
    prepare_datasets=prepare_prompts,
    options=("reward_functions", "num_generations", "max_completion_length", "beta", "temperature"),
    settings=grpo_settings,
    trainer_keywords=reward_keywords,
    finish=drop_reference_adapter,
    run_context=plain_log_probabilities_off_gpu,  # TRL scores completions with a Triton kernel: a GPU only
    main_metrics=("reward",),
)


@dataclass
class RewardReport:
    """Mean reward per reward function over held-out prompts, and the completions behind them."""

    means: dict  # {reward function name: mean reward}
    examples: list  # [{"prompt", "completion", "rewards": {name: value}}]

    def __getitem__(self, name):
        return self.means[name]

    def __str__(self):
        lines = [f"{len(self.examples)} held-out prompts, greedy completions:"]
        lines += [f"  {name}: {value:.3f}" for name, value in self.means.items()]
        return "\n".join(lines)

    __repr__ = __str__


def evaluate_rewards(model, tokenizer, rows, reward_functions, *, max_new_tokens=MAX_COMPLETION_LENGTH, batch_size=16,
                     max_examples=None):
    """Score `model`'s greedy completions of held-out `rows` with `reward_functions`; returns a RewardReport.

    Each row is a prompt as `train(..., method="grpo")` takes it ({"question": ..., "answer": ...}); every other
    column reaches the reward functions by name, as in training.

    Example:
        >>> report = evaluate_rewards(model, tokenizer, load_arithmetic("test"), [format_reward, exact_answer_reward])
        >>> report["exact_answer_reward"]
        0.42
    """
    from ftlib.generation import generate

    functions = check_reward_functions(reward_functions)
    check_positive("max_new_tokens", max_new_tokens, f"{MAX_COMPLETION_LENGTH}, the max_completion_length of training")
    check_positive("batch_size", batch_size, "16 (or 1 if memory is short)")
    check_positive("max_examples", max_examples, "64", allow_none=True)
    prompts = _as_prompts(list(rows)[:max_examples] if max_examples else rows, False, "rows").to_list()
    _check_reward_columns(functions, set(prompts[0]))
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = [row["prompt"] for row in prompts[start:start + batch_size]]
        completions += generate(model, tokenizer, batch, max_new_tokens=max_new_tokens)
    columns = {key: [row[key] for row in prompts] for key in prompts[0] if key != "prompt"}
    scores = {_name(function): function(prompts=[row["prompt"] for row in prompts], completions=completions, **columns)
              for function in functions}
    means = {name: sum(values) / len(values) for name, values in scores.items()}
    examples = [{"prompt": row["prompt"], "completion": completion_text(completion),
                 "rewards": {name: values[index] for name, values in scores.items()}}
                for index, (row, completion) in enumerate(zip(prompts, completions))]
    return RewardReport(means, examples)
