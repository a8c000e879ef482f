"""The `ftlib` command: quickstart, train and chat from a terminal.

    ftlib quickstart                       fine-tune the tiny demo model and show that it learned
    ftlib train --model ftlib-tiny --data rows.jsonl --output my-adapter
    ftlib chat my-adapter                  talk to a saved adapter or merged model
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
    train.add_argument("--max-steps", type=int, default=60)
    train.add_argument("--epochs", type=float, default=None, help="train by passes over the data instead of steps")
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--gradient-accumulation", type=int, default=4)
    train.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (0 for none)")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    train.set_defaults(handler=_train)

    chat = commands.add_parser("chat", help="talk to a saved adapter or merged model")
    chat.add_argument("path", help="a folder written by ftlib.save, a Hub id, or ftlib-tiny")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--system", default=None, help="a system prompt")
    chat.set_defaults(handler=_chat)
    return parser


def _quickstart(arguments):
    from ftlib.cli.quickstart import run_quickstart

    run_quickstart(output_dir=arguments.output_dir, max_steps=arguments.max_steps)


def _train(arguments):
    from ftlib import add_lora, format_dataset, load_model, save, train
    from ftlib.models import load_tokenizer

    # The data is read first, with the tokenizer alone, so a bad file fails before the model loads.
    tokenizer = load_tokenizer(arguments.model, arguments.max_seq_length)
    dataset = format_dataset(arguments.data, tokenizer, test_size=arguments.test_size or None)
    model, tokenizer = load_model(
        arguments.model, max_seq_length=arguments.max_seq_length, load_in_4bit=not arguments.no_4bit
    )
    model = add_lora(model, r=arguments.r, lora_alpha=arguments.lora_alpha)
    history = train(
        model, tokenizer, dataset,
        per_device_train_batch_size=arguments.batch_size,
        gradient_accumulation_steps=arguments.gradient_accumulation,
        max_steps=arguments.max_steps,
        num_train_epochs=arguments.epochs,
        learning_rate=arguments.learning_rate,
    )
    save(model, tokenizer, arguments.output, overwrite=arguments.overwrite)
    held_out = f", held-out loss {history.final_eval_loss:.3f}" if history.eval_loss else ""
    print(f"train: final_loss={history.final_loss:.3f}{held_out} seconds={history.seconds:.0f}")


def _chat(arguments):
    from ftlib.generation import run_chat

    run_chat(
        arguments.path, max_new_tokens=arguments.max_new_tokens, temperature=arguments.temperature,
        system=arguments.system, input_function=input,
    )


if __name__ == "__main__":
    sys.exit(main())
