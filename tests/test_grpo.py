"""GRPO: the ready reward functions on hand-written completions, the arithmetic task, the settings that are
refused before any weight changes, and a run on the tiny model that raises held-out reward."""

import pytest
import torch

from ftlib import add_lora, format_dataset, load_model, save, train
from ftlib.demo.arithmetic import load_arithmetic, make_splits
from ftlib.errors import FtlibError
from ftlib.training.grpo import evaluate_rewards
from ftlib.training.rewards import (
    close_answer_reward,
    exact_answer_reward,
    format_reward,
    length_guard,
    normalise_number,
)


def _chat(text):
    return [{"role": "assistant", "content": text}]


# Reward functions on hand-written completions -----------------------------------------------------------


def test_format_reward_wants_exactly_one_filled_pair_of_tags():
    completions = ["3 + 4 = 7. <answer>7</answer>", "7", "<answer></answer>", "<answer>7</answer><answer>8</answer>",
                   "<answer>7", _chat("<answer>seven</answer>")]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_exact_answer_reward_compares_numbers_after_normalising():
    completions = ["<answer>1,200</answer>", "<answer> 7.0 </answer>", "<answer>$7</answer>", "<answer>8</answer>",
                   "7", "<answer>3 + 4 = 7</answer>", _chat("so <answer>7.</answer>")]
    answers = ["1200", "7", "7", "7", "7", "7", "7"]
    assert exact_answer_reward(completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_normalise_number_refuses_text_that_commits_to_no_single_number():
    assert normalise_number("-3") == -3.0 and normalise_number("0.5") == 0.5
    assert normalise_number("seven") is None and normalise_number("3 or 4") is None and normalise_number(None) is None


def test_close_answer_reward_gives_partial_credit_by_distance():
    rewards = close_answer_reward(["<answer>7</answer>", "<answer>8</answer>", "<answer>10</answer>", "8"],
                                  answer=["7"] * 4)
    assert rewards == [1.0, 0.5, 0.25, 0.0]


def test_length_guard_penalises_only_past_its_limit_and_at_most_minus_one():
    guard = length_guard(max_words=4)
    assert guard.__name__ == "length_guard"
    assert guard(["a b c d", "a b c d e f", "a " * 40]) == [0.0, -0.5, -1.0]
    with pytest.raises(FtlibError, match="max_words"):
        length_guard(max_words=0)


def test_rewards_refuse_a_reference_column_of_the_wrong_length():
    with pytest.raises(FtlibError, match="one answer per completion"):
        exact_answer_reward(["<answer>1</answer>", "<answer>2</answer>"], answer=["1"])


# The task ------------------------------------------------------------------------------------------------


def test_arithmetic_task_answers_are_right_and_held_out_rows_share_no_company():
    splits = make_splits(train_size=64, test_size=16, seed=1)
    for row in splits["train"] + splits["test"]:
        equation = row["solution"].split(".")[0]
        assert float(eval(equation.replace("=", "=="))), equation  # the worked solution's arithmetic holds
        assert exact_answer_reward([row["solution"]], answer=[row["answer"]]) == [1.0]
        assert format_reward([row["solution"]]) == [1.0]
    train_companies = {" ".join(row["question"].split()[:2]) for row in splits["train"]}
    assert not train_companies & {" ".join(row["question"].split()[:2]) for row in splits["test"]}
    shipped = load_arithmetic("test")
    assert len(shipped) == 64 and shipped == make_splits()["test"]  # the data in data/ is the generator's output


# Settings refused before any weight changes ---------------------------------------------------------------


@pytest.fixture
def tiny_lora():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False)
    return add_lora(model, use_gradient_checkpointing=False), tokenizer


def _adapter_weights(model):
    return [parameter.detach().clone() for name, parameter in model.named_parameters() if "lora_" in name]


@pytest.mark.parametrize("settings, message", [
    ({}, "needs reward_functions"),
    ({"reward_functions": ["format"]}, "needs reward_functions"),
    ({"reward_functions": [format_reward], "num_generations": 3}, "num_generations=4 or 8"),
    ({"reward_functions": [format_reward], "num_generations": 1}, "at least 2"),
    ({"reward_functions": [format_reward], "beta": -0.1}, "beta"),
    ({"reward_functions": [lambda completions, solution_steps, **kwargs: [0.0] * len(completions)]},
     "needs 'solution_steps'"),
])
def test_bad_grpo_settings_are_refused_before_any_weight_changes(tiny_lora, settings, message):
    model, tokenizer = tiny_lora
    before = _adapter_weights(model)
    with pytest.raises(FtlibError, match=message):
        train(model, tokenizer, load_arithmetic("train")[:16], method="grpo", max_steps=1, verbose=False, **settings)
    assert all(torch.equal(old, new) for old, new in zip(before, _adapter_weights(model)))
    assert list(model.peft_config) == ["default"]


def test_grpo_options_are_refused_for_another_method(tiny_lora):
    model, tokenizer = tiny_lora
    with pytest.raises(FtlibError, match="num_generations=4 has no effect with method='sft'"):
        train(model, tokenizer, [{"question": "2+2?", "answer": "4"}], num_generations=4, max_steps=1, verbose=False)


# A run that learns -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grpo_raises_held_out_reward_and_accuracy_after_a_format_warm_up(tmp_path):
    """Notebook 11's run: a full fine-tune warm-up on the format, saved and loaded back as the base (the reference,
    adapters off), then GRPO on LoRA adapters."""
    model, tokenizer = load_model("ftlib-tiny", max_seq_length=256, load_in_4bit=False, full_finetuning=True)
    rows, held_out = load_arithmetic("train"), load_arithmetic("test")
    warm_up = format_dataset([{"question": row["question"], "answer": row["solution"]} for row in rows], tokenizer)
    train(model, tokenizer, warm_up, max_steps=WARM_UP_STEPS, learning_rate=1e-3, per_device_train_batch_size=8,
          gradient_accumulation_steps=1, verbose=False)
    rewards = [format_reward, exact_answer_reward, close_answer_reward]
    before = evaluate_rewards(model, tokenizer, held_out, rewards, max_new_tokens=24)
    save(model, tokenizer, tmp_path / "warmed-up", method="merged_16bit", verbose=False)
    model, tokenizer = load_model(str(tmp_path / "warmed-up"), max_seq_length=256, load_in_4bit=False)
    model = add_lora(model, r=16, lora_alpha=32, use_gradient_checkpointing=False)
    history = train(model, tokenizer, rows, method="grpo", reward_functions=rewards, num_generations=4,
                    max_completion_length=24, per_device_train_batch_size=16, gradient_accumulation_steps=1,
                    max_steps=GRPO_STEPS, learning_rate=GRPO_RATE, verbose=False)
    after = evaluate_rewards(model, tokenizer, held_out, rewards, max_new_tokens=24)
    assert after["exact_answer_reward"] > before["exact_answer_reward"], (before, after)
    assert sum(after.means.values()) > sum(before.means.values()), (before, after)
    # The history keeps what GRPO logs: reward per function, its spread, completion length and KL.
    for name in ("reward", "reward_std", "rewards/exact_answer_reward/mean", "completions/mean_length", "kl",
                 "frac_reward_zero_std"):
        _steps, values = history.metric(name)
        assert len(values) == GRPO_STEPS, name
    assert list(model.peft_config) == ["default"]  # TRL's frozen reference copy is gone


WARM_UP_STEPS, GRPO_STEPS, GRPO_RATE = 200, 40, 2e-3  # notebook 11's settings


# diagnose on hand-made GRPO histories ------------------------------------------------------------------


def _grpo_history(reward, zero_std_share=0.2, clipped=0.0, loss=0.01, steps=20):
    """A history as a GRPO run logs it: a loss near 0, and the rewards, spread and clipping of each step."""
    from ftlib.training.history import TrainingHistory

    history = TrainingHistory()
    for step in range(1, steps + 1):
        value = reward(step) if callable(reward) else reward
        history.record({"loss": loss, "learning_rate": 1e-5, "reward": value, "reward_std": 0.3,
                        "frac_reward_zero_std": zero_std_share, "completions/clipped_ratio": clipped,
                        "completions/max_length": 256.0, "kl": 0.01}, step)
    return history


@pytest.mark.parametrize("history, verdict, words", [
    (_grpo_history(0.0, zero_std_share=1.0), "no reward", ["was 0 at every step", "SFT", "partial-credit"]),
    (_grpo_history(0.0, zero_std_share=1.0, clipped=0.9), "no reward", ["hit max_completion_length"]),
    (_grpo_history(1.0, zero_std_share=0.95), "no learning signal", ["95% of the groups", "easier", "partial-credit"]),
    (_grpo_history(lambda step: 0.1 * step, clipped=0.8), "cut off", ["80%", "256 tokens", "length_guard"]),
    (_grpo_history(0.5), "under-fitted", ["did not rise", "learning_rate=2e-05"]),
    (_grpo_history(lambda step: float("nan") if step == 7 else 0.5, loss=0.0), "diverged", ["step 7", "float16"]),
    (_grpo_history(lambda step: 0.1 * step), "healthy", ["rose from"]),
])
def test_diagnose_names_the_stuck_grpo_cases_in_words(history, verdict, words):
    from ftlib import diagnose

    result = diagnose(history)
    assert result.verdict == verdict, str(result)
    for word in words:
        assert word in str(result), (word, str(result))


def test_a_grpo_loss_near_0_is_not_read_as_memorising():
    from ftlib import diagnose

    history = _grpo_history(lambda step: 0.1 * step, loss=0.0)
    assert diagnose(history).verdict == "healthy"  # an SFT history with this loss would be "over-fitted"
