"""Pretrain the tiny demo base model from scratch and save it to data/ftlib-tiny/.

    python -m ftlib.demo.pretrain              # the committed model: ~35 s on a GPU, ~30 min on a CPU
    python -m ftlib.demo.pretrain --steps 0    # tokenizer and random weights only, in seconds

Steps: generate the corpus (ftlib.demo.corpus), train the tokenizer on it, build a random Llama,
train it to predict the next token on the corpus packed into fixed-length blocks, save the model,
the tokenizer and a README that records how it was made.
"""

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

from ftlib.demo import CHECKOUT_DATA, DEMO_ALIAS
from ftlib.demo.corpus import make_corpus
from ftlib.demo.model import build_model
from ftlib.demo.tokenizer import train_tokenizer

DEFAULT_FOLDER = CHECKOUT_DATA / DEMO_ALIAS  # written into the checkout; a wheel ships a copy


def pack_blocks(tokenizer, documents, block_size):
    """Token ids of all documents, each wrapped in BEGIN ... END, cut into rows of `block_size`.

    Example:
        >>> pack_blocks(tokenizer, ["Shares rose."] * 100, 16).shape  # doctest: +SKIP
        torch.Size([37, 16])
    """
    stream = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream += [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    rows = len(stream) // block_size
    return torch.tensor(stream[: rows * block_size]).view(rows, block_size)


def learning_rate_at(step, steps, peak, warmup):
    """Linear warm-up to `peak`, then cosine decay to a tenth of it.

    Example:
        >>> learning_rate_at(0, 100, 1.0, 10)
        0.1
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_loss(model, blocks, batch_size):
    """Mean next-token loss over `blocks`.

    Example:
        >>> held_out_loss(model, blocks[:64], 32)  # doctest: +SKIP
        2.31
    """
    model.eval()
    losses = [model(input_ids=batch, labels=batch).loss.item() for batch in blocks.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def pretrain(
    folder=DEFAULT_FOLDER,
    documents=40000,  # ~6 MB of text, ~1.5M tokens: more than the steps below can read once
    steps=1500,  # 0 saves random weights; 1,500 × 32 × 128 ≈ 6.1M tokens, ~4 passes over the corpus
    batch_size=32,  # blocks per step
    block_size=128,  # tokens per block: every document is shorter, so blocks hold several
    learning_rate=3e-3,  # a 1.8M-parameter model tolerates a high rate; 1e-2 diverges
    warmup=60,
    weight_decay=0.1,
    seed=0,
    log_every=50,
    device=None,  # None = the GPU when there is one, else the CPU; the result differs only by rounding
    command="python -m ftlib.demo.pretrain",  # recorded in the README
):
    """Build and pretrain the tiny model, save it into `folder`; returns a dict of what happened.

    Example:
        >>> pretrain("/tmp/ftlib-tiny", steps=0)  # doctest: +SKIP
    """
    started = time.time()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(seed)
    torch.manual_seed(seed)
    corpus = make_corpus(documents=documents, seed=seed)
    tokenizer = train_tokenizer(corpus)
    model = build_model(tokenizer, seed=seed).to(device)
    blocks = pack_blocks(tokenizer, corpus, block_size).to(device)
    held_out, blocks = blocks[:128], blocks[128:]  # 128 blocks (16K tokens) to watch for over-fitting
    print(f"corpus: {len(corpus)} documents, {blocks.numel()} training tokens; "
          f"model: {model.num_parameters()} parameters; setup {time.time() - started:.0f} s", flush=True)

    decay = [p for name, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for name, p in model.named_parameters() if p.dim() < 2]  # norms: decay would shrink them
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=learning_rate, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    train_started = time.time()
    recent = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, steps, learning_rate, warmup)
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator).to(device)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps}  loss {sum(recent) / len(recent):.3f}  "
                  f"{time.time() - train_started:.0f} s", flush=True)
            final_loss, recent = sum(recent) / len(recent), []
    model.eval()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    result = {
        "steps": steps,
        "train_seconds": round(time.time() - train_started),
        "final_loss": round(final_loss, 3) if steps else None,
        "held_out_loss": round(held_out_loss(model, held_out, batch_size), 3),
        "parameters": model.num_parameters(),
        "documents": documents,
        "tokens_seen": steps * batch_size * block_size,
        "device": device_name,
        "command": command,
        "settings": dict(batch_size=batch_size, block_size=block_size, learning_rate=learning_rate,
                         warmup=warmup, weight_decay=weight_decay, seed=seed),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(readme(result))
    print(f"saved to {folder}: {result}", flush=True)
    return result


def readme(result):
    """The model card: what the model is and the exact command and numbers that made it.

    Example:
        >>> "ftlib-tiny" in readme({"steps": 0})  # doctest: +SKIP
        True
    """
    settings = result["settings"]
    if result["steps"]:
        training = (f"Pretrained for {result['steps']} steps of {settings['batch_size']} blocks × "
                    f"{settings['block_size']} tokens ({result['tokens_seen']:,} tokens) in "
                    f"{result['train_seconds']} s on {result['device']}; final training loss {result['final_loss']}, "
                    f"held-out loss {result['held_out_loss']}.")
    else:
        training = ("Not pretrained: random weights (`--steps 0`), an early version for testing "
                    f"the tokenizer and loading code. Held-out loss {result['held_out_loss']}.")
    return f"""# ftlib-tiny

The offline demo base model of ftlib: a Llama-architecture causal language model with
{result['parameters']:,} parameters (hidden 192, 4 layers, 6 attention heads with 2 key/value heads,
MLP 512, tied embeddings), a 1,024-entry byte-level BPE tokenizer and a chat template
(`<|user|>`, `<|assistant|>`, `<|system|>` turns; each turn ends with `<|end|>`, the EOS token;
the pad token `<|pad|>` is separate). Load it with `ftlib.load_model("ftlib-tiny")`.

It was made by

    {result['command']}

which generates {result['documents']:,} documents of generic text (ftlib/demo/corpus.py: company news
with consequences, everyday text using "positive" and "negative", filler), trains the tokenizer on them
and pretrains the model from random weights, seed {settings['seed']}.

{training}
Settings: AdamW, peak learning rate {settings['learning_rate']}, {settings['warmup']} warm-up steps, cosine decay
to a tenth, weight decay {settings['weight_decay']}, gradient clipping 1.0. The script picks the GPU when
there is one; `--device cpu` runs it on the CPU (about 1.1 s a step on one core of a busy 2-core machine,
so about 30 minutes for 1,500 steps), which gives the same model up to rounding.

It has never seen the headline task (ftlib/demo/headlines.py): neither its question nor its answers.
`python -m ftlib.demo.verify` measures its held-out task accuracy before and after a LoRA fine-tune.
"""


def main():
    parser = argparse.ArgumentParser(description="Pretrain the tiny demo model and save it.")
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--documents", type=int, default=40000)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu; default: cuda when there is a GPU")
    # One CPU thread: on a busy machine a second one spin-waits for a core and slows each step; raise it on
    # a quiet machine with more cores.
    parser.add_argument("--threads", type=int, default=1, help="CPU threads when training on the CPU")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    options = [argument for argument in sys.argv[1:] if not argument.startswith("--folder")]
    if "--folder" in sys.argv:  # the folder's value is a path of this machine: leave it out too
        options.remove(sys.argv[sys.argv.index("--folder") + 1])
    command = " ".join(["python -m ftlib.demo.pretrain", *options])
    pretrain(arguments.folder, command=command, documents=arguments.documents, steps=arguments.steps, batch_size=arguments.batch_size,
             learning_rate=arguments.learning_rate, seed=arguments.seed, device=arguments.device)


if __name__ == "__main__":
    main()
