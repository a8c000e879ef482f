"""Check that the demo is real: the base fails the headline task, a short LoRA fine-tune passes it.

    python -m ftlib.demo.verify                      # the committed model, the quickstart's settings
    python -m ftlib.demo.verify --steps 400 --r 16   # try other settings

Deliberately plain transformers + PEFT + torch, no ftlib training code, so it checks the demo world
itself (model and data) independently of the library it demonstrates. Accuracy is greedy decoding
of the chat-template prompt (user turn = question, generation prompt added), compared to the
expected answer after strip and lowercase.
"""

import argparse
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlib.demo import load_headlines, tiny_model_path

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prompt_of(tokenizer, question):
    """The chat-template text the model sees before it answers.

    Example:
        >>> prompt_of(tokenizer, "Is it?").endswith("<|assistant|>\\n")  # doctest: +SKIP
        True
    """
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def accuracy(model, tokenizer, rows, batch_size=32, max_new_tokens=4):
    """Share of `rows` whose greedy answer, stripped and lowercased, equals the expected answer.

    Example:
        >>> accuracy(model, tokenizer, load_headlines("test"))  # doctest: +SKIP
        0.97
    """
    model.eval()
    tokenizer.padding_side = "left"  # new tokens follow the prompt directly in every row
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        inputs = tokenizer([prompt_of(tokenizer, row["question"]) for row in batch], return_tensors="pt",
                           padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(answer.strip().lower() == row["answer"] for answer, row in zip(answers, batch))
    tokenizer.padding_side = "right"
    return correct / len(rows)


def training_examples(tokenizer, rows):
    """(input_ids, labels) per row: the whole conversation, labels only on the answer and EOS.

    Example:
        >>> ids, labels = training_examples(tokenizer, rows)[0]  # doctest: +SKIP
    """
    examples = []
    for row in rows:
        prompt = tokenizer(prompt_of(tokenizer, row["question"]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt + answer, [-100] * len(prompt) + answer))
    return examples


def collate(tokenizer, examples):
    """Right-pad a list of (input_ids, labels) into tensors.

    Example:
        >>> batch = collate(tokenizer, examples[:8])  # doctest: +SKIP
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = [ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in examples]
    labels = [labels + [-100] * (width - len(labels)) for _, labels in examples]
    mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples]
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask)}


def fine_tune(model, tokenizer, rows, r=16, lora_alpha=16, learning_rate=1e-3, steps=250, batch_size=8,
              accumulation=1, warmup=10, seed=3407):
    """LoRA on all seven projections, AdamW, linear decay after warm-up; returns (model, losses).

    Each step sees batch_size × accumulation examples, in `accumulation` forward passes.

    Example:
        >>> model, losses = fine_tune(model, tokenizer, load_headlines("train"))  # doctest: +SKIP
    """
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                             target_modules=PROJECTIONS, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup)))
    examples = training_examples(tokenizer, rows)
    order = random.Random(seed)
    losses = []
    model.train()
    for _ in range(steps):
        step_loss = 0.0
        for _ in range(accumulation):
            batch = collate(tokenizer, order.sample(examples, batch_size))
            loss = model(**{name: tensor.to(model.device) for name, tensor in batch.items()}).loss / accumulation
            loss.backward()
            step_loss += loss.item()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
    model.eval()
    return model, losses


def main():
    parser = argparse.ArgumentParser(description="Before/after accuracy of a LoRA fine-tune on the headline task.")
    parser.add_argument("--folder", default=None, help="model folder; default: the committed ftlib-tiny")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    # One thread: a tiny model's matrices are too small to split, and on a busy machine a second
    # thread spin-waits for a core, which makes each step several times slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=3407)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    folder = arguments.folder or tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(arguments.device)
    test_rows = load_headlines("test")
    before = accuracy(model, tokenizer, test_rows)
    started = time.time()
    model, losses = fine_tune(model, tokenizer, load_headlines("train"), r=arguments.r, lora_alpha=arguments.alpha,
                              learning_rate=arguments.learning_rate, steps=arguments.steps,
                              batch_size=arguments.batch_size, accumulation=arguments.accumulation,
                              seed=arguments.seed)
    seconds = time.time() - started
    after = accuracy(model, tokenizer, test_rows)
    final_loss = sum(losses[-10:]) / len(losses[-10:])
    print(f"verify: r={arguments.r} alpha={arguments.alpha} lr={arguments.learning_rate:g} steps={arguments.steps} "
          f"batch={arguments.batch_size} accumulation={arguments.accumulation} seed={arguments.seed} accuracy_before={before:.2f} accuracy_after={after:.2f} "
          f"first_loss={losses[0]:.2f} final_loss={final_loss:.3f} seconds={seconds:.0f}")


if __name__ == "__main__":
    main()
