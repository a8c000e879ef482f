"""Step 6 of the guide, measured a second way: EleutherAI's lm-evaluation-harness on your held-out rows.

`run_harness` turns held-out rows into a local lm-eval task, wraps the model you already have in lm-eval's
`HFLM` (nothing is reloaded), runs `lm_eval.simple_evaluate` and returns a `HarnessResult`. The task lives in
memory: no dataset hub, no metric download, no files written. Needs the optional extra:
`pip install "ftlib[harness]"` (or `pip install lm-eval`).

Three ways to score (`metric=`), all built into lm-eval:

| metric | lm-eval task | counts as right |
| --- | --- | --- |
| "choice" (default) | multiple_choice, `acc` | the answer the model finds most likely among `choices` |
| "first_word" | generate_until, `exact_match` | the first word it writes is the answer's first word |
| "exact_match" | generate_until, `exact_match` | everything it writes is the answer |

Generated text is compared ignoring case and punctuation. "choice" suits a label set such as
"positive"/"negative": nothing is generated, the harness compares the log-likelihood of each label after the
question. For answers that are a label followed by a reason ("Negative. Investors will worry."), "choice"
ranks the labels (the answers' first words) and "first_word" checks the label the model writes.

How it differs from `ftlib.evaluate`: evaluate generates every answer and scores it with normalised exact
match, so a model that never writes a label scores 0. The harness's "choice" only asks which label is more
likely, so such a model still ranks the labels, and a base model lands near chance (0.5 for two labels)
rather than at 0. Both ask the question the way training formatted it: lm-eval's `apply_chat_template`
with the template `format_dataset` used.

    >>> from ftlib.harness import run_harness
    >>> from ftlib.demo import load_headlines
    >>> before = run_harness(model, tokenizer, load_headlines("test"))
    >>> print(before)  # the tiny base model: acc 0.500 ± 0.063 on 64 held-out headlines, chance
"""

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

from ftlib.checks import check_positive
from ftlib.errors import FtlibError
from ftlib.evaluation import normalize_answer

HARNESS_INSTALL = 'pip install "ftlib[harness]"'
METRICS = ("choice", "first_word", "exact_match")
MAX_CHOICES = 20  # more distinct answers than this is free text, not a label set
STDERR_RESAMPLES = 1000  # lm-eval's stderr of a mean is a formula; resampling is only for other aggregations


@dataclass
class HarnessResult:
    """What `run_harness` measured. Print it for the score and a few examples the model got wrong.

    scores: lm-eval metric name -> value, e.g. {"acc": 0.97}
    stderr: metric name -> standard error of that value (how much it would move on another sample)
    examples: one dict per example: question, expected, predicted, correct (plus the prompt lm-eval built)
    lm_eval_output: everything `lm_eval.simple_evaluate` returned (configs, versions, samples)
    """

    task_name: str
    metric: str
    scores: dict
    stderr: dict
    num_examples: int
    num_fewshot: int = 0
    choices: list | None = None
    examples: list = field(default_factory=list, repr=False)
    lm_eval_output: dict = field(default_factory=dict, repr=False)

    @property
    def score(self):
        """The main number: the one metric this task reports."""
        return next(iter(self.scores.values()))

    @property
    def wrong(self):
        return [example for example in self.examples if not example["correct"]]

    def summary(self):
        how = {
            "choice": f"the likeliest of {', '.join(repr(choice) for choice in self.choices or [])}",
            "first_word": "first word generated, case and punctuation ignored",
            "exact_match": "whole answer generated, case and punctuation ignored",
        }[self.metric]
        lines = [f"lm-evaluation-harness, task {self.task_name!r}: {self.num_examples} held-out examples, "
                 f"{self.num_fewshot}-shot"]
        for name, value in self.scores.items():
            error = self.stderr.get(name)
            spread = f" ± {error:.3f}" if isinstance(error, float) else ""
            correct = sum(1 for example in self.examples if example["correct"])
            lines.append(f"  {name:<12}{value:.3f}{spread}   ({correct} of {len(self.examples)} right: {how})")
        return "\n".join(lines)

    def __str__(self):
        text = self.summary()
        if self.wrong:
            rows = [f"  {_clip(example['question'], 56):<56} {_clip(example['expected'], 14):<14} "
                    f"{_clip(example['predicted'], 14)}" for example in self.wrong[:5]]
            more = f"\n  ... {len(self.wrong) - 5} more (result.wrong has them all)" if len(self.wrong) > 5 else ""
            text += (f"\n\nWrong answers:\n  {'question':<56} {'expected':<14} predicted\n"
                     + "\n".join(rows) + more)
        return text

    def __repr__(self):
        return str(self)


def _clip(text, width):
    text = " ".join(str(text).split()) or "(nothing)"
    return text if len(text) <= width else text[:width - 3] + "..."


def run_harness(
    model,
    tokenizer,
    rows,
    *,
    metric="choice",  # "choice": likeliest label, nothing generated; "first_word" / "exact_match": generate, compare
    choices=None,  # "choice" only; None = the distinct answers, or their first words when answers carry a reason
    num_fewshot=0,  # solved examples shown before each question (0-5 typical): more helps a base model, costs length
    fewshot_rows=None,  # where those examples come from; None = the other held-out rows (pass training rows to keep them unseen)
    batch_size=8,  # examples per forward pass: larger is faster, needs more memory
    max_examples=None,  # score only the first N rows (None = all): quick checks on big test sets
    max_new_tokens=None,  # generating metrics only; None = just over the longest expected answer
    template=None,  # the chat template format_dataset used: None = the tokenizer's own, else "alpaca"; or a name/Jinja string
    system_prompt=None,  # the system turn format_dataset added to rows that have none
    task_name="ftlib_heldout",  # the task's name in lm-eval's output
    verbose=False,  # True shows lm-eval's own log messages
):
    """Run EleutherAI's lm-evaluation-harness on held-out `rows` and return a `HarnessResult`.

    `rows` are single-turn examples in any shape `format_dataset` reads (question/answer dicts, Alpaca,
    one-turn messages, prompt/completion; a list, a Dataset, a DataFrame or a file path). The model is
    scored as it is, in evaluation mode, and left in the mode it was in.

    Example:
        >>> print(run_harness(model, tokenizer, load_headlines("test")))  # doctest: +SKIP
    """
    if metric not in METRICS:
        raise FtlibError(f"metric must be one of {', '.join(repr(name) for name in METRICS)}, got {metric!r}: "
                         "try metric='choice' for a label set, 'first_word' for a label followed by a reason")
    check_positive("batch_size", batch_size, "batch_size=8 (or 1 if memory is short)")
    check_positive("max_examples", max_examples, "64", allow_none=True)
    check_positive("max_new_tokens", max_new_tokens, "16", allow_none=True)
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise FtlibError(f"num_fewshot must be a whole number from 0, got {num_fewshot!r}: try num_fewshot=0 or 3")
    if metric == "choice" and max_new_tokens is not None:
        raise FtlibError("max_new_tokens sets how much is generated, but metric='choice' generates nothing: "
                         "leave max_new_tokens out, or use metric='first_word' or 'exact_match'")
    if metric != "choice" and choices is not None:
        raise FtlibError(f"choices are the labels metric='choice' ranks; metric={metric!r} generates its answer: "
                         "leave choices out, or use metric='choice'")
    if fewshot_rows is not None and num_fewshot == 0:
        raise FtlibError("fewshot_rows are shown only when num_fewshot > 0: pass num_fewshot=3, or leave fewshot_rows out")
    lm_eval = _import_lm_eval()

    docs, plain = _documents(rows, system_prompt)  # plain: prompt/completion rows, trained without a chat template
    docs = docs[:max_examples]
    shots = None
    if fewshot_rows is not None:
        shots, shots_plain = _documents(fewshot_rows, system_prompt)
        if shots_plain != plain:
            raise FtlibError("fewshot_rows and rows must have the same shape (both question/answer, or both "
                             "prompt/completion): take both from the data the model was trained on")
    if metric == "choice":
        choices = _choices(docs, choices)
        for doc in docs + (shots or []):
            doc["label"] = _label_index(doc, choices)
    if max_new_tokens is None and metric != "choice":
        longest = max(len(tokenizer(doc[_target_field(metric)], add_special_tokens=False)["input_ids"]) for doc in docs)
        max_new_tokens = min(512, longest + 8)  # room for a few extra words before EOS; 512 caps runaway text

    config = _task_config(task_name, metric, choices, docs, shots, max_new_tokens, plain)
    chat_template = None
    if not plain:
        from ftlib.data.templates import resolve_template

        chat_template, _ = resolve_template(tokenizer, template)
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer = copy.deepcopy(tokenizer)  # HFLM sets a pad token: leave the caller's tokenizer as it was

    was_training = model.training
    try:
        with _quiet(verbose):
            language_model = lm_eval.models.huggingface.HFLM(
                pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                chat_template_args={"chat_template": chat_template} if chat_template else None,
            )
            output = lm_eval.simple_evaluate(
                model=language_model,
                tasks=[config],
                task_manager=lm_eval.tasks.TaskManager(include_defaults=False),  # skip indexing lm-eval's own tasks
                num_fewshot=num_fewshot,
                apply_chat_template=not plain,
                fewshot_as_multiturn=not plain,  # each solved example is its own user/assistant turn
                bootstrap_iters=STDERR_RESAMPLES,
                log_samples=True,
                # Scoring is greedy, so nothing needs reseeding: leave the caller's random state alone
                # (few-shot examples are drawn with lm-eval's own seeded generator).
                random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            )
    finally:
        model.train(was_training)
    return _result(output, task_name, metric, choices, num_fewshot, docs)


def _import_lm_eval():
    try:
        import lm_eval
        import lm_eval.models.huggingface
        import lm_eval.tasks
    except ImportError as error:
        raise FtlibError(
            f"run_harness needs EleutherAI's lm-evaluation-harness, which is not installed ({error}): "
            f"{HARNESS_INSTALL}  (or: pip install lm-eval), then restart the notebook's kernel"
        ) from error
    return lm_eval


@contextmanager
def _quiet(verbose):
    """lm-eval warns about choices made on purpose here (a model object, not a name; an in-memory dataset)."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------
# rows -> lm-eval documents
# ---------------------------------------------------------------------------------------------------


def _documents(rows, system_prompt):
    """(docs, plain): one dict per row (question, answer, system ("" when none), first_word), and whether the
    rows are plain prompt/completion text, which format_dataset joins without a chat template."""
    from ftlib.data.readers import read_table
    from ftlib.data.shapes import choose_shape, to_example

    table = read_table(rows)
    spec = choose_shape(table.rows)
    if spec.shape == "text":
        raise FtlibError(
            "these rows are raw text (a 'text' column): there is no answer to score. The harness needs "
            "question/answer rows; for raw text, ftlib.evaluate(..., measure_accuracy=False) measures the loss"
        )
    docs = []
    for index, row in enumerate(table.rows):
        example = to_example(row, spec, table.place(index), system_prompt)
        if "messages" in example:
            messages = example["messages"]
            system = messages[0]["content"] if messages[0]["role"] == "system" else ""
            turns = messages[1:] if system else messages
            if len(turns) != 2:
                raise FtlibError(
                    f"{table.place(index)} is a conversation of {len(turns) // 2} exchanges; the harness scores one "
                    "question and its answer: keep the last exchange, or use ftlib.evaluate for conversations"
                )
            question, answer, plain = turns[0]["content"], turns[1]["content"], False
        else:
            system, question, answer, plain = "", example["prompt"], example["completion"], True
        answer = answer.strip()
        docs.append({"question": question, "answer": answer, "system": system, "first_word": _first_word(answer)})
    return docs, plain


def _first_word(text):
    words = normalize_answer(text).split()
    return words[0] if words else ""


def _choices(docs, choices):
    if choices is not None:
        if isinstance(choices, str) or not all(isinstance(choice, str) and choice.strip() for choice in choices) \
                or len(choices) < 2:
            raise FtlibError(f"choices must be a list of at least two labels, got {choices!r}: "
                             "e.g. choices=['positive', 'negative']")
        return list(choices)
    # The labels as the data spells them; two spellings of one label ("Negative", "negative") count once.
    # A label set: at least two labels, each answering two rows or more on average.
    most = min(MAX_CHOICES, len(docs) // 2)
    answers = {normalize_answer(doc["answer"]): doc["answer"] for doc in reversed(docs)}
    if 2 <= len(answers) <= most:
        return sorted(answers.values())
    firsts = {doc["first_word"]: doc["answer"].split()[0].strip(".,;:!?") for doc in reversed(docs)}
    if 2 <= len(firsts) <= most:
        return sorted(firsts.values())
    raise FtlibError(
        f"the {len(docs)} answers are not a label set ({len(answers)} different answers, {len(firsts)} different "
        "first words), so metric='choice' has nothing to choose between: name the labels with choices=[...], "
        "or score generated text with metric='exact_match' or 'first_word'"
    )


def _label_index(doc, choices):
    """The choice this answer is: the whole answer, else its first word (case and punctuation ignored)."""
    normalized = [normalize_answer(choice) for choice in choices]
    for candidate in (normalize_answer(doc["answer"]), doc["first_word"]):
        if candidate in normalized:
            return normalized.index(candidate)
    raise FtlibError(
        f"the answer {_clip(doc['answer'], 40)!r} is none of the choices {choices}: add its label to choices, "
        "or leave choices=None to take them from the answers"
    )


def _target_field(metric):
    return "first_word" if metric == "first_word" else "answer"


def _task_config(task_name, metric, choices, docs, shots, max_new_tokens, plain):
    """An lm-eval task as the dict a task YAML file would hold, with the rows in memory."""

    def dataset(**_):  # lm-eval passes the task's metadata; the rows are all it needs
        from datasets import Dataset, DatasetDict

        splits = {"test": Dataset.from_list(docs)}
        if shots is not None:
            splits["train"] = Dataset.from_list(shots)
        return DatasetDict(splits)

    config = {
        "task": task_name,
        "custom_dataset": dataset,
        "test_split": "test",
        "fewshot_split": "train" if shots is not None else "test",  # from test: the example itself is left out
        "doc_to_text": "question",
        # With a chat template lm-eval writes the system field as the system turn; rows without one leave it "".
        "description": "" if plain else "system",
        # Plain prompt/completion rows were trained as prompt + completion, joined as they are.
        "target_delimiter": "" if plain else " ",
    }
    if metric == "choice":
        return config | {
            "output_type": "multiple_choice",
            "doc_to_choice": list(choices),
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
    first_word = metric == "first_word"
    extract = [{"function": "regex", "regex_pattern": r"\w+", "fallback": ""}] if first_word \
        else [{"function": "remove_whitespace"}]
    return config | {
        "output_type": "generate_until",
        "doc_to_target": _target_field(metric),
        "generation_kwargs": {"until": [], "max_gen_toks": max_new_tokens, "do_sample": False},  # until: EOS
        "filter_list": [{"name": metric, "filter": extract + [{"function": "take_first"}]}],
        "fewshot_config": {"doc_to_target": "answer"},  # solved examples show the whole answer, as trained
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
    }


# ---------------------------------------------------------------------------------------------------
# lm-eval's output -> HarnessResult
# ---------------------------------------------------------------------------------------------------


def _result(output, task_name, metric, choices, num_fewshot, docs):
    numbers = output["results"][task_name]
    scores, stderr = {}, {}
    for key, value in numbers.items():
        if "," not in key or "_stderr," in key:
            continue
        name = key.split(",")[0]
        scores[name] = float(value)
        error = numbers.get(f"{name}_stderr,{key.split(',', 1)[1]}")
        stderr[name] = float(error) if isinstance(error, (int, float)) else None
    examples = []
    for sample in sorted(output["samples"][task_name], key=lambda sample: sample["doc_id"]):
        doc = sample["doc"]
        if metric == "choice":
            likelihoods = [float(response[0]) for response in sample["filtered_resps"]]
            predicted = choices[max(range(len(choices)), key=likelihoods.__getitem__)]
            correct = bool(sample["acc"])
            extra = {"log_likelihoods": dict(zip(choices, likelihoods))}
        else:
            predicted = str(sample["resps"][0][0]).strip()
            correct = bool(sample["exact_match"])
            extra = {"scored": sample["filtered_resps"][0] if sample["filtered_resps"] else ""}
        examples.append({"question": doc["question"], "expected": doc["answer"], "predicted": predicted,
                         "correct": correct, "prompt": sample["arguments"][0][0], **extra})
    return HarnessResult(task_name, metric, scores, stderr, len(examples), num_fewshot,
                         list(choices) if choices else None, examples, output)
