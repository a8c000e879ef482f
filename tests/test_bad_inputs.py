"""The bad-input matrix: what a careful new user gets wrong, across the whole public API.

Each case calls one public function with one bad input and asserts three things: the error is an
FtlibError (and the built-in type a caller would catch, where one fits: FileNotFoundError,
PermissionError), and its message holds the words that name what was wrong and the fix. One tiny
model is loaded for the whole file; a case that would change a model works on a copy.

Training methods: every entry of TRAINING_METHODS gets the shared training cases; a new method
(DPO, GRPO, ...) is added there with a call that takes (model, tokenizer, dataset, **settings).
"""

import copy
import json
import os
import shutil
import types

import pytest
import torch

import ftlib
from ftlib import add_lora, chat, evaluate, format_dataset, generate, load_model, save, stream, train
from ftlib.cli import main as cli_main
from ftlib.demo import load_headlines, tiny_model_path
from ftlib.errors import FtlibError, FtlibFileNotFoundError, FtlibPermissionError
from ftlib.export import push_to_hub

TRAINING_METHODS = {"sft": train}  # name -> train-like call: (model, tokenizer, dataset, **settings)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny model, its tokenizer, a LoRA copy, formatted rows and a scratch folder, shared by every case."""
    base, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    lora = add_lora(copy.deepcopy(base), r=4, use_gradient_checkpointing=False)
    rows = load_headlines("train")[:8]
    data = format_dataset(rows, tokenizer, verbose=False)
    folder = tmp_path_factory.mktemp("bad-inputs")
    return types.SimpleNamespace(base=base, tokenizer=tokenizer, lora=lora, rows=rows, data=data, folder=folder)


def _fresh_folder(world, name):
    path = world.folder / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def _model_copy(world, name, change):
    """A copy of the tiny model's folder, with `change(folder)` applied."""
    folder = _fresh_folder(world, name)
    shutil.copytree(tiny_model_path(), folder)
    change(folder)
    return folder


def _load_changed(name, change):
    """load_model on a copy of the tiny model's folder with `change(folder)` applied."""
    return lambda w: load_model(str(_model_copy(w, name, change)), load_in_4bit=False)


def _load_adapter_changed(name, change):
    """load_model on a saved adapter with `change(folder)` applied."""
    return lambda w: load_model(str(_saved_adapter(w, name, change)))


def _empty_folder(world, name):
    folder = _fresh_folder(world, name)
    folder.mkdir()
    return str(folder)


def _nan_lora(world):
    model = copy.deepcopy(world.lora)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n)[0, 0] = float("nan")
    return model


def _read_only(world):
    """A folder path this process may not create: under a chmod 555 folder, or (root ignores modes) under /sys."""
    if os.geteuid() == 0:
        return "/sys/ftlib-bad-inputs-test/out"
    folder = world.folder / "read-only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return str(folder / "out")


def _saved_adapter(world, name, change=None):
    folder = _fresh_folder(world, name)
    save(world.lora, world.tokenizer, folder, verbose=False)
    if change is not None:
        change(folder)
    return folder


def _write(path, text, mode="w"):
    with open(path, mode) as handle:
        handle.write(text)
    return path


def _file(world, name, text, mode="w"):
    return str(_write(world.folder / name, text, mode))


# ------------------------------------------------------------------------------------------ the cases
# (id, call(world), error types, words the message must hold)

LOAD = [
    ("model-name-none", lambda w: load_model(None), (), ["model_name must be", "ftlib-tiny"]),
    ("model-name-empty", lambda w: load_model("  "), (), ["model_name must be"]),
    ("folder-missing", lambda w: load_model("./no/such/model"),
     (FileNotFoundError,), ["no folder at", "check the path"]),
    ("folder-not-a-model", _load_changed("empty-model", lambda f: [p.unlink() for p in f.iterdir()]),
     (FileNotFoundError,), ["neither config.json", "pass the folder"]),
    ("weights-damaged", _load_changed("damaged", lambda f: _write(f / "model.safetensors", b"\xff" * 64, "wb")),
     (), ["model.safetensors", "damaged", "copy or download it again"]),
    ("config-not-json", _load_changed("bad-config", lambda f: _write(f / "config.json", "{not json")),
     (), ["config.json", "not valid JSON", "restore it"]),
    ("no-weights", _load_changed("no-weights", lambda f: (f / "model.safetensors").unlink()),
     (FileNotFoundError,), ["no weights file", "model.safetensors"]),
    ("dtype-typo", lambda w: load_model("ftlib-tiny", dtype="flaot16"), (), ["got 'flaot16'", "'float16'"]),
    ("dtype-integer", lambda w: load_model("ftlib-tiny", dtype="int8"), (), ["got 'int8'", "'bfloat16'"]),
    ("device-missing-gpu", lambda w: load_model("ftlib-tiny", load_in_4bit=False, device_map="cuda:7"),
     (), ["cuda:7", "device_map=None"]),
    ("device-unknown", lambda w: load_model("ftlib-tiny", load_in_4bit=False, device_map="the-gpu"),
     (), ["not a device", "'auto'"]),
    ("max-seq-length-zero", lambda w: load_model("ftlib-tiny", max_seq_length=0), (), ["max_seq_length", "2048"]),
    ("max-seq-length-nan", lambda w: load_model("ftlib-tiny", max_seq_length=float("nan")),
     (), ["max_seq_length", "not a finite number"]),
    ("4bit-and-8bit", lambda w: load_model("ftlib-tiny", load_in_4bit=True, load_in_8bit=True), (), ["pick one"]),
    ("full-and-8bit", lambda w: load_model("ftlib-tiny", full_finetuning=True, load_in_8bit=True),
     (), ["drop load_in_8bit=True"]),
    ("full-and-4bit", lambda w: load_model("ftlib-tiny", full_finetuning=True, load_in_4bit=True),
     (), ["drop load_in_4bit=True"]),
    ("4bit-as-text", lambda w: load_model("ftlib-tiny", load_in_4bit="no"), (), ["load_in_4bit must be True or False"]),
    ("gguf-missing", lambda w: load_model("./nowhere/model.gguf"),
     (FileNotFoundError,), ["no GGUF file", "check the path"]),
    ("adapter-config-not-json", _load_adapter_changed("bad-json", lambda f: _write(f / "adapter_config.json", "{")),
     (), ["not valid JSON", "adapter"]),
    ("adapter-without-base", _load_adapter_changed("no-base", lambda f: _write(f / "adapter_config.json", "{}")),
     (), ["base_model_name_or_path"]),
    ("adapter-full-finetuning", lambda w: load_model(str(_saved_adapter(w, "adapter-full")), full_finetuning=True),
     (), ["holds a LoRA adapter", "method='merged_16bit'"]),
]

LORA = [
    ("r-zero", lambda w: add_lora(copy.deepcopy(w.base), r=0), (), ["r must be a positive whole number", "r=16"]),
    ("r-fraction", lambda w: add_lora(copy.deepcopy(w.base), r=2.5), (), ["r must be a positive whole number"]),
    ("r-bool", lambda w: add_lora(copy.deepcopy(w.base), r=True), (), ["r must be a positive whole number"]),
    ("alpha-nan", lambda w: add_lora(copy.deepcopy(w.base), lora_alpha=float("nan")),
     (), ["lora_alpha", "not a finite number", "at least the rank"]),
    ("alpha-inf", lambda w: add_lora(copy.deepcopy(w.base), lora_alpha=float("inf")),
     (), ["lora_alpha", "not a finite number"]),
    ("alpha-negative", lambda w: add_lora(copy.deepcopy(w.base), lora_alpha=-8),
     (), ["lora_alpha must be a positive number"]),
    ("dropout-one", lambda w: add_lora(copy.deepcopy(w.base), lora_dropout=1.0),
     (), ["lora_dropout", "below 1", "0.05"]),
    ("dropout-nan", lambda w: add_lora(copy.deepcopy(w.base), lora_dropout=float("nan")),
     (), ["lora_dropout", "not a finite number"]),
    ("targets-unknown", lambda w: add_lora(copy.deepcopy(w.base), target_modules=["attention"]),
     (), ["not linear layers", "q_proj"]),
    ("targets-not-names", lambda w: add_lora(copy.deepcopy(w.base), target_modules=5),
     (), ["target_modules must be a list"]),
    ("checkpointing-word", lambda w: add_lora(copy.deepcopy(w.base), use_gradient_checkpointing="yes"),
     (), ["True, False or 'offload'"]),
    ("adapters-twice", lambda w: add_lora(copy.deepcopy(w.lora)),
     (), ["already has LoRA adapters", "load the base model again"]),
    ("full-finetuning-model", lambda w: add_lora(load_model("ftlib-tiny", full_finetuning=True)[0]),
     (), ["full_finetuning=True", "full_finetuning=False"]),
    ("not-a-model", lambda w: add_lora("ftlib-tiny"), (), ["add_lora needs the model", "load_model"]),
    ("rslora-text", lambda w: add_lora(copy.deepcopy(w.base), use_rslora="yes"),
     (), ["use_rslora must be True or False"]),
    ("seed-fraction", lambda w: add_lora(copy.deepcopy(w.base), seed=1.5), (), ["seed must be a whole number"]),
]

FORMAT = [
    ("data-none", lambda w: format_dataset(None, w.tokenizer),
     (), ["cannot read data of type NoneType", "list of dicts"]),
    ("data-empty", lambda w: format_dataset([], w.tokenizer), (), ["empty", "at least one example"]),
    ("path-missing", lambda w: format_dataset("no_such_file.jsonl", w.tokenizer),
     (FileNotFoundError,), ["path does not exist", "working directory"]),
    ("jsonl-bad-line", lambda w: format_dataset(_file(w, "bad.jsonl", '{"question": "a", "answer": "b"}\n{oops\n'),
                                                w.tokenizer),
     (), ["line 2 of bad.jsonl", "not valid JSON"]),
    ("jsonl-not-utf8", lambda w: format_dataset(_file(w, "latin.jsonl", '{"question": "caf\xe9", "answer": "b"}\n'
                                                      .encode("latin-1"), "wb"), w.tokenizer),
     (), ["not UTF-8", "re-save it as UTF-8"]),
    ("row-not-dict", lambda w: format_dataset([{"question": "a", "answer": "b"}, "text"], w.tokenizer),
     (), ["row 1", "must be a dict"]),
    ("shape-unknown", lambda w: format_dataset(w.rows, w.tokenizer, shape="pairs"),
     (), ["unknown shape 'pairs'", "shape=None"]),
    ("answer-missing", lambda w: format_dataset([{"question": "a", "answer": ""}], w.tokenizer),
     (), ["answer", "fill it in or remove the row"]),
    ("test-size-above-one", lambda w: format_dataset(w.rows, w.tokenizer, test_size=1.5),
     (), ["test_size", "test_size=0.2"]),
    ("test-size-nan", lambda w: format_dataset(w.rows, w.tokenizer, test_size=float("nan")),
     (), ["test_size", "test_size=0.2"]),
    ("max-seq-length-one", lambda w: format_dataset(w.rows, w.tokenizer, max_seq_length=1),
     (), ["max_seq_length", ">= 2"]),
    ("too-long-word", lambda w: format_dataset(w.rows, w.tokenizer, too_long="cut"),
     (), ["too_long must be 'truncate' or 'drop'"]),
    ("extension-unknown", lambda w: format_dataset(_file(w, "rows.xlsx", "x"), w.tokenizer),
     (), ["don't know how to read", ".jsonl"]),
    ("folder-without-text", lambda w: format_dataset(_empty_folder(w, "empty-data"), w.tokenizer),
     (), ["no text files", ".txt"]),
    ("answers-cut-off", lambda w: format_dataset(w.rows, w.tokenizer, max_seq_length=4),
     (), ["no trainable tokens", "Raise max_seq_length"]),
]


def _train_cases(name, method):
    def call(**settings):
        return lambda w: method(copy.deepcopy(w.lora), w.tokenizer, w.data, max_steps=1, verbose=False, **settings)

    cases = [
        ("no-adapters", lambda w: method(copy.deepcopy(w.base), w.tokenizer, w.data, max_steps=1),
         (), ["no LoRA adapters", "add_lora(model)", "full_finetuning=True"]),
        ("nan-weight", lambda w: method(_nan_lora(w), w.tokenizer, w.data, max_steps=1),
         (), ["NaN or infinite", "lora_B", "load the model again"]),
        ("max-seq-length-negative", call(max_seq_length=-5), (), ["max_seq_length", "2048"]),
        ("max-seq-length-zero", call(max_seq_length=0), (), ["max_seq_length", "2048"]),
        ("eval-steps-without-held-out", call(eval_steps=2), (), ["held-out data", "test_size=0.2"]),
        ("logging-steps-zero", call(logging_steps=0), (), ["logging_steps", "try 1"]),
        ("scheduler-unknown", call(lr_scheduler_type="cosinus"), (), ["lr_scheduler_type", "'cosine'"]),
        ("learning-rate-nan", call(learning_rate=float("nan")), (), ["learning_rate", "not a finite number", "2e-4"]),
        ("learning-rate-inf", call(learning_rate=float("inf")), (), ["learning_rate", "not a finite number"]),
        ("learning-rate-zero", call(learning_rate=0), (), ["learning_rate must be a positive number"]),
        ("learning-rate-huge", call(learning_rate=1e39), (), ["learning_rate", "at most 10", "2e-4"]),
        ("weight-decay-nan", call(weight_decay=float("nan")), (), ["weight_decay", "0.01"]),
        ("weight-decay-negative", call(weight_decay=-0.1), (), ["weight_decay", "at least 0"]),
        ("warmup-negative", call(warmup_steps=-1), (), ["warmup_steps", "try 5"]),
        ("steps-and-epochs", lambda w: method(copy.deepcopy(w.lora), w.tokenizer, w.data, max_steps=5,
                                              num_train_epochs=1),
         (), ["max_steps=5 and num_train_epochs=1", "keep max_steps"]),
        ("epochs-nan", lambda w: method(copy.deepcopy(w.lora), w.tokenizer, w.data, num_train_epochs=float("nan")),
         (), ["num_train_epochs", "1 to 3"]),
        ("batch-zero", call(per_device_train_batch_size=0), (), ["per_device_train_batch_size", "memory is short"]),
        ("accumulation-fraction", call(gradient_accumulation_steps=1.5),
         (), ["gradient_accumulation_steps", "effective batch"]),
        ("optimizer-unknown", call(optim="adam_fast"), (), ["optim must be one of", "'adamw_torch'"]),
        ("output-read-only", lambda w: method(copy.deepcopy(w.lora), w.tokenizer, w.data, max_steps=1, save_steps=1,
                                              output_dir=_read_only(w)),
         (PermissionError,), ["cannot write checkpoints", "output_dir="]),
        ("output-is-a-file", lambda w: method(copy.deepcopy(w.lora), w.tokenizer, w.data, max_steps=1, save_steps=1,
                                              output_dir=_file(w, "not-a-folder", "x")),
         (), ["is a file, not a folder", "output_dir="]),
        ("resume-without-checkpoint", lambda w: method(copy.deepcopy(w.lora), w.tokenizer, w.data, max_steps=1,
                                                       resume=True, output_dir=str(_fresh_folder(w, "no-checks"))),
         (), ["holds no checkpoint", "save_steps"]),
        ("callbacks-not-a-list", call(callbacks=print), (), ["callbacks must be a list", "TrainerCallback"]),
        ("patience-zero", call(early_stopping_patience=0), (), ["early_stopping_patience", "3 evaluations"]),
        ("dataset-empty", lambda w: method(copy.deepcopy(w.lora), w.tokenizer, [], max_steps=1),
         (), ["empty", "at least one example"]),
        ("seed-text", call(seed="42"), (), ["seed must be a whole number"]),
        ("verbose-text", lambda w: method(copy.deepcopy(w.lora), w.tokenizer, w.data, max_steps=1, verbose="no"),
         (), ["verbose must be True or False"]),
    ]
    return [(f"{name}-{case_id}", *rest) for case_id, *rest in cases]


TRAIN = [case for name, method in TRAINING_METHODS.items() for case in _train_cases(name, method)]

EVALUATE = [
    ("batch-zero", lambda w: evaluate(w.lora, w.tokenizer, w.rows, batch_size=0), (), ["batch_size", "batch_size=8"]),
    ("max-examples-negative", lambda w: evaluate(w.lora, w.tokenizer, w.rows, max_examples=-1),
     (), ["max_examples", "100"]),
    ("scorer-not-callable", lambda w: evaluate(w.lora, w.tokenizer, w.rows, scorer="exact"),
     (), ["scorer must be a function"]),
    ("nothing-to-measure", lambda w: evaluate(w.lora, w.tokenizer, w.rows, measure_loss=False, measure_accuracy=False),
     (), ["nothing to measure", "keep one of them"]),
    ("flag-as-text", lambda w: evaluate(w.lora, w.tokenizer, w.rows, measure_loss="no"),
     (), ["measure_loss must be True or False"]),
    ("no-test-split", lambda w: evaluate(w.lora, w.tokenizer,
                                         format_dataset({"train": w.rows}, w.tokenizer, verbose=False)),
     (), ["no 'test'", "held-out split"]),
    ("empty", lambda w: evaluate(w.lora, w.tokenizer, []), (), ["empty"]),
    ("nan-weight", lambda w: evaluate(_nan_lora(w), w.tokenizer, w.rows),
     (), ["NaN or infinite", "load the model again"]),
    ("max-new-tokens-nan", lambda w: evaluate(w.lora, w.tokenizer, w.rows[:2], max_new_tokens=float("nan"),
                                              measure_loss=False),
     (), ["max_new_tokens", "not a finite number"]),
    ("not-a-model", lambda w: evaluate("my-adapter", w.tokenizer, w.rows), (), ["evaluate needs the model"]),
]

GENERATE = [
    ("prompt-empty", lambda w: generate(w.lora, w.tokenizer, ""), (), ["prompt is empty", "pass the question"]),
    ("prompt-blank", lambda w: generate(w.lora, w.tokenizer, "   "), (), ["prompt is empty"]),
    ("batch-item-empty", lambda w: generate(w.lora, w.tokenizer, ["Hi", ""]), (), ["prompt 1 of the batch is empty"]),
    ("message-empty", lambda w: generate(w.lora, w.tokenizer, [{"role": "user", "content": ""}]),
     (), ["is empty", "nothing for the model to answer"]),
    ("prompt-none", lambda w: generate(w.lora, w.tokenizer, None), (), ["generate needs a prompt"]),
    ("temperature-nan", lambda w: generate(w.lora, w.tokenizer, "Hi", temperature=float("nan")),
     (), ["temperature", "not a finite number", "0.7"]),
    ("temperature-negative", lambda w: generate(w.lora, w.tokenizer, "Hi", temperature=-1),
     (), ["temperature", "at least 0"]),
    ("top-p-zero", lambda w: generate(w.lora, w.tokenizer, "Hi", temperature=0.7, top_p=0), (), ["top_p", "0.9"]),
    ("top-p-nan", lambda w: generate(w.lora, w.tokenizer, "Hi", temperature=0.7, top_p=float("nan")),
     (), ["top_p", "not a finite number"]),
    ("min-p-one", lambda w: generate(w.lora, w.tokenizer, "Hi", temperature=0.7, min_p=1.0), (), ["min_p", "0.05-0.1"]),
    ("top-k-fraction", lambda w: generate(w.lora, w.tokenizer, "Hi", temperature=0.7, top_k=1.5),
     (), ["top_k must be a whole number"]),
    ("repetition-penalty-zero", lambda w: generate(w.lora, w.tokenizer, "Hi", repetition_penalty=0),
     (), ["repetition_penalty", "1.0 (off)"]),
    ("max-new-tokens-zero", lambda w: generate(w.lora, w.tokenizer, "Hi", max_new_tokens=0),
     (), ["max_new_tokens", "128"]),
    ("greedy-with-top-p", lambda w: generate(w.lora, w.tokenizer, "Hi", top_p=0.9),
     (), ["temperature=0", "temperature=0.7"]),
    ("role-unknown", lambda w: generate(w.lora, w.tokenizer, [{"role": "bot", "content": "Hi"}]),
     (), ["role 'bot'", "use one of"]),
    ("ends-with-assistant", lambda w: generate(w.lora, w.tokenizer, [{"role": "user", "content": "Hi"},
                                                                    {"role": "assistant", "content": "Yo"}]),
     (), ["ends with an assistant message", "append a"]),
    ("nan-weight", lambda w: generate(_nan_lora(w), w.tokenizer, "Hi"),
     (), ["NaN or infinite", "lora_B", "load the model again"]),
    ("nan-weight-stream", lambda w: "".join(stream(_nan_lora(w), w.tokenizer, "Hi")),
     (), ["NaN or infinite", "load the model again"]),
    ("stream-batch", lambda w: list(stream(w.lora, w.tokenizer, ["a", "b"])),
     (), ["stream takes one prompt", "use generate"]),
    ("print-tokens-batch", lambda w: generate(w.lora, w.tokenizer, ["a", "b"], print_tokens=True),
     (), ["print_tokens=True", "one prompt"]),
    ("seed-fraction", lambda w: generate(w.lora, w.tokenizer, "Hi", seed=0.5), (), ["seed must be a whole number"]),
    ("chat-empty", lambda w: chat(w.lora, w.tokenizer, ""), (), ["non-empty message", "Hello!"]),
    ("chat-history-not-list", lambda w: chat(w.lora, w.tokenizer, "Hi", "earlier"),
     (), ["history must be a list", "[]"]),
    ("chat-system-conflict", lambda w: chat(w.lora, w.tokenizer, "Hi", [{"role": "system", "content": "A"}],
                                            system_prompt="B"),
     (), ["differs from the system message", "leave system_prompt out"]),
    ("chat-nan-weight", lambda w: chat(_nan_lora(w), w.tokenizer, "Hi"), (), ["NaN or infinite"]),
]


def _with_user_readme(world):
    folder = _saved_adapter(world, "user-readme")
    _write(folder / "README.md", "my own notes")
    return folder


def _with_user_modelfile(world):
    folder = _saved_adapter(world, "user-modelfile")
    _write(folder / "Modelfile", "FROM my-own")
    return folder


SAVE = [
    ("method-unknown", lambda w: save(w.lora, w.tokenizer, _fresh_folder(w, "s1"), method="merged"),
     (), ["unknown save method", "merged_16bit"]),
    ("not-empty", lambda w: save(w.lora, w.tokenizer, _saved_adapter(w, "s2")),
     (), ["not empty", "overwrite=True", "kept"]),
    ("user-folder", lambda w: save(w.lora, w.tokenizer, _notes_folder(w), overwrite=True),
     (), ["not a saved model", "choose a new folder"]),
    ("path-is-file", lambda w: save(w.lora, w.tokenizer, _file(w, "a-file", "x")), (), ["is a file, not a folder"]),
    ("path-empty", lambda w: save(w.lora, w.tokenizer, ""), (), ["path must be a folder name"]),
    ("path-working-directory", lambda w: save(w.lora, w.tokenizer, "."), (), ["refusing to save into", "sub-folder"]),
    ("nan-adapter", lambda w: save(_nan_lora(w), w.tokenizer, _fresh_folder(w, "s3")),
     (), ["NaN or infinite", "nothing was written"]),
    ("no-adapter", lambda w: save(w.base, w.tokenizer, _fresh_folder(w, "s4")),
     (), ["has none", "method='merged_16bit'"]),
    ("dtype-for-lora", lambda w: save(w.lora, w.tokenizer, _fresh_folder(w, "s5"), dtype="float16"),
     (), ["no effect on method='lora'"]),
    ("token-without-repo", lambda w: save(w.lora, w.tokenizer, _fresh_folder(w, "s6"), token="hf_x"),
     (), ["no repo_id", "repo_id="]),
    ("repo-id-malformed", lambda w: save(w.lora, w.tokenizer, _fresh_folder(w, "s7"), repo_id="just-a-name"),
     (), ["your-name/model-name"]),
    ("gguf-quantization-unknown", lambda w: save(w.lora, w.tokenizer, _fresh_folder(w, "s8"), method="gguf",
                                                 quantization="q3"),
     (), ["unknown GGUF quantization", "q8_0"]),
    ("read-only-folder", lambda w: save(w.lora, w.tokenizer, _read_only(w)),
     (PermissionError,), ["cannot write in", "folder you may write to"]),
    ("edited-file", lambda w: save(w.lora, w.tokenizer, _with_user_readme(w), overwrite=True),
     (), ["README.md", "changed since", "move your version elsewhere"]),
    ("user-file-clash", lambda w: save(w.lora, w.tokenizer, _with_user_modelfile(w), method="ollama", overwrite=True),
     (), ["Modelfile", "did not write", "move or rename yours"]),
    ("overwrite-as-text", lambda w: save(w.lora, w.tokenizer, _fresh_folder(w, "s9"), overwrite="yes"),
     (), ["overwrite must be True or False"]),
    ("tokenizer-missing", lambda w: save(w.lora, None, _fresh_folder(w, "s10")),
     (), ["save needs the model's tokenizer"]),
    ("push-not-a-folder", lambda w: push_to_hub(w.folder / "never-saved", "me/model"),
     (), ["nothing to push", "save the model there first"]),
]


def _notes_folder(world):
    folder = _fresh_folder(world, "notes")
    folder.mkdir()
    _write(folder / "diary.txt", "mine")
    return folder


def _rows_file(world):
    return _file(world, "rows.jsonl", "".join(json.dumps(row) + "\n" for row in world.rows))


def _cli_train(output, *options):
    """`ftlib train` on the headline rows, 16-bit, nothing held out, with `options` added."""
    return lambda w: cli_main(["train", "--data", _rows_file(w), "--output", str(w.folder / output), "--no-4bit",
                               "--test-size", "0", *options])


CLI = [
    ("data-missing", lambda w: cli_main(["train", "--data", "missing.jsonl", "--output", str(w.folder / "c1")]),
     (), ["path does not exist"]),
    ("model-missing", _cli_train("c2", "--model", "./no/model"), (), ["no folder at"]),
    ("model-damaged", lambda w: _cli_train("c3", "--model", str(_model_copy(
        w, "cli-bad-config", lambda f: _write(f / "tokenizer_config.json", "{"))))(w),
     (), ["not valid JSON", "restore it"]),
    ("learning-rate-nan", _cli_train("c4", "--learning-rate", "nan"), (), ["learning_rate", "not a finite number"]),
    ("rank-zero", _cli_train("c5", "--r", "0"), (), ["r must be a positive whole number"]),
    ("test-size-too-big", _cli_train("c6", "--test-size", "1.5"), (), ["test_size", "test_size=0.2"]),
    ("max-steps-zero", _cli_train("c7", "--max-steps", "0"), (), ["max_steps must be a positive whole number"]),
    ("epochs-nan", _cli_train("c8", "--num-train-epochs", "nan"), (), ["num_train_epochs", "1 to 3"]),
    ("output-not-empty", lambda w: cli_main(["train", "--data", _rows_file(w), "--output", str(_notes_folder(w))]),
     (), ["not empty", "overwrite"]),
    ("chat-missing-folder", lambda w: cli_main(["chat", "./no/adapter"]), (), ["no folder at"]),
    ("quickstart-no-steps", lambda w: cli_main(["quickstart", "--max-steps", "0", "--output-dir", str(w.folder / "q")]),
     (), ["max_steps must be a positive whole number", "250"]),
]

CASES = [(f"{group}-{case_id}", call, kinds, words)
         for group, cases in (("load_model", LOAD), ("add_lora", LORA), ("format_dataset", FORMAT), ("train", TRAIN),
                              ("evaluate", EVALUATE), ("generate", GENERATE), ("save", SAVE), ("cli", CLI))
         for case_id, call, kinds, words in cases]


def test_the_matrix_is_large_and_covers_every_public_step():
    assert len(CASES) >= 80, len(CASES)
    groups = {case_id.split("-")[0] for case_id, *_ in CASES}
    assert groups == {"load_model", "add_lora", "format_dataset", "train", "evaluate", "generate", "save", "cli"}


@pytest.mark.parametrize("case_id, call, kinds, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_raises_an_ftlib_error_that_names_the_fix(world, case_id, call, kinds, words, capsys):
    if case_id.startswith("cli-"):
        assert call(world) == 2  # the command prints the error and exits with status 2
        message = capsys.readouterr().err
        assert "\nftlib: " in "\n" + message, message  # a line of its own, after any progress bars
        for word in words:
            assert word in message, (word, message)
        return
    with pytest.raises(FtlibError) as caught:
        call(world)
    error = caught.value
    for kind in kinds:
        assert isinstance(error, kind), (type(error).__mro__, kind)
    message = str(error)
    for word in words:
        assert word in message, (word, message)


def test_the_shared_models_were_left_unchanged(world):
    """No case changed the module's models: each that could worked on a copy."""
    assert not ftlib.checks.non_finite_weights(world.lora) and not ftlib.checks.non_finite_weights(world.base)
    assert not hasattr(world.base, "peft_config")


def test_error_classes_are_ftlib_errors_and_the_built_in_types():
    assert issubclass(FtlibError, ValueError)
    assert issubclass(FtlibFileNotFoundError, FtlibError) and issubclass(FtlibFileNotFoundError, FileNotFoundError)
    assert issubclass(FtlibPermissionError, FtlibError) and issubclass(FtlibPermissionError, PermissionError)
    assert str(FtlibFileNotFoundError("no folder at x: check the path")) == "no folder at x: check the path"
    from ftlib.training.safety import out_of_memory_error

    out_of_memory = out_of_memory_error(torch.OutOfMemoryError("CUDA out of memory"), {"per_device_train_batch_size": 4})
    assert isinstance(out_of_memory, FtlibError) and isinstance(out_of_memory, torch.OutOfMemoryError)
    assert "per_device_train_batch_size=2" in str(out_of_memory)
