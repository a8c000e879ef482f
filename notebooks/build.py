"""Write the eight guide notebooks from the cell lists in this file, and optionally run them.

    python notebooks/build.py            # write notebooks/0*.ipynb without outputs
    python notebooks/build.py --execute  # write them, then run each top to bottom and save the outputs
    python notebooks/build.py --execute 04  # only the notebooks whose names start with 04

Edit the notebooks here, not in Jupyter, so every notebook keeps the same skeleton: title and what you
will learn; setup; numbered sections where prose says why before each code cell and reads the result
after it; a recap; questions; a link to the next notebook. Every code cell starts with an nbval marker:
`# NBVAL_CHECK_OUTPUT` where the output is the same on every machine (it is compared in CI),
`# NBVAL_IGNORE_OUTPUT` where it holds timings, plots or model-dependent numbers.
"""

import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
TITLES = {
    "01": ("01_understand_fine_tuning", "Understand fine-tuning"),
    "02": ("02_choose_model_and_method", "Choose the model and the method"),
    "03": ("03_your_dataset", "Your dataset"),
    "04": ("04_model_parameters", "Model parameters"),
    "05": ("05_installing_and_requirements", "Installing and requirements"),
    "06": ("06_training_and_evaluation", "Training and evaluation"),
    "07": ("07_running_and_saving", "Running and saving"),
    "08": ("08_done_what_next", "Done: what to try next"),
}


def md(text):
    return new_markdown_cell(dedent(text).strip())


def code(text, check=False):
    """A code cell; check=True when its output is identical on every machine, so nbval compares it."""
    marker = "# NBVAL_CHECK_OUTPUT" if check else "# NBVAL_IGNORE_OUTPUT"
    return new_code_cell(marker + "\n" + dedent(text).strip())


def link(number):
    file_name, title = TITLES[number]
    return f"[{number} · {title}]({file_name}.ipynb)"


def header(number, learn, minutes):
    _, title = TITLES[number]
    bullets = "\n".join(f"- {item}" for item in learn)
    # Built without dedent: the bullets are inserted unindented, which would stop dedent from working.
    return [md(
        f"# {number} · {title}\n\n**What you will learn**\n\n{bullets}\n\n"
        f"Runs top to bottom in about {minutes} on a laptop CPU with the tiny demo model; nothing needs a click."
    )]


SETUP = [
    md("""
        ## Setup

        The first cell installs ftlib where it is missing (Colab, Kaggle) and does nothing where it is already
        installed. ftlib is not on PyPI, so the cell installs it, with trl, bitsandbytes and the widgets, from a
        copy of its repository: a clone found in this folder, a folder above it or one folder down (after
        `!git clone <repository URL>` on Colab), or else the environment variable **`FTLIB_SOURCE`**: a git URL
        (`git+https://...`), a wheel or a folder. Without either it stops and says what to do.

        The second cell checks the machine and picks the model:

        - no GPU, or no internet: `ftlib-tiny`, the small demo model that ships with ftlib and trains in a
          minute on a CPU;
        - a GPU with internet: a real small instruct model (`Qwen/Qwen2.5-0.5B-Instruct`);
        - set the environment variable **`FTLIB_MODEL`** to any Hugging Face model id or local folder to use
          that instead (and `FTLIB_LOAD_IN_4BIT=0` or `1` to choose 4-bit loading yourself).
        """),
    code("""
        import importlib.util, os, subprocess, sys
        from pathlib import Path
        here = Path.cwd()  # a copy of ftlib's repository counts here, in a folder above, or one down (a fresh clone)
        projects = [folder / "pyproject.toml" for folder in (here, *here.parents, *here.iterdir())]
        clones = [str(path.parent) for path in projects if path.is_file() and 'name = "ftlib"' in path.read_text()]
        source = clones[0] if clones else os.environ.get("FTLIB_SOURCE")  # a git URL, a wheel or a folder
        found = importlib.util.find_spec("ftlib")  # a bare clone folder named ftlib imports as an empty namespace
        if found is not None and found.origin is not None:
            print("ftlib is already installed: nothing to do.")
        elif source:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", source, "ftlib[notebooks]"], check=True)
            print(f"Installed ftlib from {source}. If an import below fails, restart the runtime and run again.")
        else:
            raise ModuleNotFoundError(f"ftlib is not installed and no copy of its repository is in {here}: clone or upload "
                                      "it there, or set FTLIB_SOURCE to a git URL, a wheel or a folder of it.")
        """),
    code("""
        from ftlib.environment import check_environment
        from ftlib.notebook import choose_model

        print(check_environment().summary())
        choice = choose_model()
        choice
        """),
]


def footer(number, recap, questions):
    recap_text = "\n".join(f"- {item}" for item in recap)
    question_text = "\n".join(f"{index}. {item}" for index, item in enumerate(questions, 1))
    if number == "08":
        onward = "Back to the start: " + link("01") + " — or open the README for the command-line tools."
    else:
        onward = "Next: " + link(f"{int(number) + 1:02d}")
    return [
        md(f"## Recap\n\n{recap_text}"),
        md(f"## Check yourself\n\n{question_text}"),
        md(f"---\n\n**{onward}**"),
    ]


# Cells that load the headline task and the model, shared by the notebooks that train.
LOAD_MODEL = [
    md("""
        Load the model and its tokenizer. `max_seq_length=256` is plenty for one-line headlines (the guide's
        2048 is for real documents); the tiny model loads in full precision because 4-bit only pays off on a GPU.
        """),
    code("""
        from ftlib import load_model

        model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
        print(type(model).__name__, f"{model.num_parameters():,} parameters")
        """),
]

LOAD_HEADLINES = [
    md("""
        The demo task is the guide's example: *does this headline impact the company positively or negatively?*
        The held-out (test) headlines are about companies that never appear in training, so a high score there
        means the model learned the task rather than memorising companies.
        """),
    code("""
        from ftlib.demo import load_headlines

        train_rows, test_rows = load_headlines("train"), load_headlines("test")
        print(len(train_rows), "training rows,", len(test_rows), "held-out rows")
        print(train_rows[0])
        """, check=True),
]


def notebook_01():
    return [
        *header("01", [
            "what fine-tuning changes in a model: its behaviour, its knowledge, its skill at one task",
            "how a model that fails a task succeeds after a one-minute fine-tune, measured on held-out data",
            "that LoRA leaves the base weights untouched and trains small adapter matrices",
            "what fine-tuning does not do",
        ], "two minutes"),
        md("""
            Fine-tuning takes a model that already knows a language and trains it a little more on examples of
            what *you* want. The guide names three reasons to do it:

            1. **Customise behaviour**: a tone, a format, a persona (always answer in JSON, say it briefly).
            2. **Inject knowledge**: facts of your domain (your products, your field's vocabulary).
            3. **Optimise a task**: one job done reliably, such as labelling headlines, which is what we do here.
            """),
        *SETUP,
        md("## 1. The task"),
        *LOAD_HEADLINES,
        md("""
            Each row is a question and the one-word answer we want. In the guide's words, question/answer pairs are
            the usual shape of fine-tuning data (notebook 03 shows the others).

            ## 2. The base model, before fine-tuning
            """),
        *LOAD_MODEL,
        md("""
            Ask it every held-out question and count how often the reply is exactly the expected label.
            `format_dataset` turns rows into training text with the model's chat template; `evaluate` generates
            the answers (greedy, so the same every time) and scores them.
            """),
        code("""
            from ftlib import evaluate, format_dataset

            train_set = format_dataset(train_rows, tokenizer, verbose=False)
            test_set = format_dataset(test_rows, tokenizer, verbose=False)
            before = evaluate(model, tokenizer, test_set, max_new_tokens=4, measure_loss=False)
            print(f"held-out accuracy before fine-tuning: {before.accuracy:.2f}")
            for example in before.examples[:3]:
                print(f"expected {example['expected']!r:12} got {example['predicted']!r}")
            """),
        md("""
            The base model has read news-like text, but nobody ever asked it this question, so it does not answer
            with a label: its accuracy is near zero. A real base model would ramble in the same way.

            ## 3. A one-minute fine-tune

            `add_lora` freezes the model and attaches small trainable LoRA adapters; it prints how few parameters
            will train. `choice.recipe` holds a learning rate and step count that suit this model: the tiny model
            needs more steps and a higher learning rate than the guide's 60 steps at 2e-4 for a real model
            (notebook 04 shows why).
            """),
        code("""
            from ftlib import add_lora

            model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=not choice.tiny)
            choice.recipe
            """, check=True),
        md("""
            Now train. The plot redraws while training runs; the line under it counts steps and estimates the
            time left.
            """),
        code("""
            from ftlib import train
            from ftlib.notebook import LiveLossPlot

            history = train(model, tokenizer, train_set, output_dir="ftlib_outputs/01",
                            callbacks=[LiveLossPlot("Notebook 01: training loss")], **choice.recipe)
            print(f"loss {history.loss[0]:.2f} -> {history.final_loss:.2f} in {history.seconds:.0f} seconds")
            """),
        md("""
            The loss is the model's surprise at the right answer: it starts high and falls as the model learns to
            answer with the expected label.

            ## 4. After fine-tuning: the same held-out questions
            """),
        code("""
            after = evaluate(model, tokenizer, test_set, max_new_tokens=4, measure_loss=False)
            print(f"{'':24}{'before':>8}{'after':>8}")
            print(f"{'held-out accuracy':24}{before.accuracy:>8.2f}{after.accuracy:>8.2f}")
            for old, new in list(zip(before.examples, after.examples))[:4]:
                print(f"expected {new['expected']!r:12} before {old['predicted']!r:14} after {new['predicted']!r}")
            """),
        md("""
            The same questions, about companies the model never saw in training, now mostly get the right label.
            The claim, checked on every run of this notebook:
            """),
        code("""
            print("accuracy rose by at least 0.5:", after.accuracy - before.accuracy >= 0.5)
            """, check=True),
        md("""
            ## 5. What changed inside the model

            LoRA adds to a frozen weight matrix W the product of two small matrices, B·A. B starts at zero, so an
            untrained adapter changes nothing. After training, every B is non-zero, while the original weights were
            never trainable at all:
            """),
        code("""
            lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
            frozen = [p for name, p in model.named_parameters() if "lora_" not in name]
            print(len(lora_b), "LoRA B matrices, all non-zero now:", all(bool(p.abs().sum() > 0) for p in lora_b))
            print("any original weight trainable:", any(p.requires_grad for p in frozen))
            """, check=True),
        md("""
            ## 6. What fine-tuning does not do

            Fine-tuning teaches patterns, not a database: a few hundred examples sharpen one task, but they will not
            reliably teach facts the model must recall word for word (retrieval suits that better), nor make a small
            model reason like a large one. And it narrows behaviour: trained only on labels, the model now answers
            almost anything with a label. Ask it something unrelated:
            """),
        code("""
            from ftlib import generate

            print(generate(model, tokenizer, "Tell me about your weekend.", max_new_tokens=12))
            """),
        md("""
            Most likely a label. That is why real fine-tuning data mixes in general examples when the model must
            stay a general assistant, and why held-out evaluation on *your* task comes first.
            """),
        *footer("01", [
            "Fine-tuning customises behaviour, injects knowledge or optimises a task, by training on examples.",
            "The tiny model failed the headline task before fine-tuning and passed it after, on held-out companies.",
            "LoRA trained a small fraction of the parameters; the base weights stayed frozen.",
            "Fine-tuning narrows behaviour: test on held-out data and mix in general data when breadth matters.",
        ], [
            "Why is the held-out set about companies that never appear in training?",
            "LoRA's B matrices start at zero. What does the model do before the first training step, and why is that useful?",
            "Which of the three reasons to fine-tune does the headline task illustrate? Give an example of the other two.",
            "After fine-tuning, the model answers an unrelated question with a label. How would you keep it general?",
        ]),
    ]


def notebook_02():
    return [
        *header("02", [
            "the four ways to fine-tune: LoRA, QLoRA, full fine-tuning and 8-bit LoRA, side by side on one model",
            "what `max_seq_length`, `dtype` and `load_in_4bit` do",
            "how much GPU memory a 1B to 70B model needs with each method, against a free T4's 16 GB",
        ], "two minutes"),
        *SETUP,
        md("""
            ## 1. Four methods on the same model

            - **LoRA**: the model in 16 bits (32 on a CPU), frozen; small adapters train.
            - **QLoRA**: the frozen model stored in 4 bits (`load_in_4bit=True`, ftlib's default), adapters on top:
              about a quarter of the weight memory.
            - **8-bit LoRA**: the frozen model in 8 bits: half the weight memory, usually slower than 4-bit.
            - **Full fine-tuning** (`full_finetuning=True`): every weight trains; the most memory, no adapters.

            The cell loads the model four times, trains each for a few steps on the same data, and measures
            trainable parameters, the weights' memory and the time per step. 4- and 8-bit loading use
            bitsandbytes, which also runs (slowly) on a CPU.
            """),
        code("""
            from ftlib import add_lora, format_dataset, load_model, train
            from ftlib.demo import load_headlines

            methods = {"LoRA": {"load_in_4bit": False}, "QLoRA": {"load_in_4bit": True},
                       "8-bit LoRA": {"load_in_4bit": False, "load_in_8bit": True},
                       "full fine-tune": {"load_in_4bit": False, "full_finetuning": True}}
            rows, results = load_headlines("train")[:64], {}
            for method, options in methods.items():
                model, tokenizer = load_model(choice.name, max_seq_length=256, **options)
                if method != "full fine-tune":
                    model = add_lora(model, use_gradient_checkpointing=not choice.tiny)
                history = train(model, tokenizer, format_dataset(rows, tokenizer), max_steps=5,
                                output_dir="ftlib_outputs/02")
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                results[method] = (trainable, model.get_memory_footprint() / 1e6, history.seconds / 5)
            """),
        md("The measurements, one row per method:"),
        code("""
            total = max(row[0] for row in results.values())
            print(f"{'method':16}{'trainable':>12}{'share':>8}{'weights MB':>12}{'s/step':>8}")
            for method, (trainable, megabytes, seconds) in results.items():
                print(f"{method:16}{trainable:>12,}{trainable / total:>8.1%}{megabytes:>12.1f}{seconds:>8.2f}")
            """),
        md("""
            Read the columns:

            - *trainable*: the adapters are a small share of the model (about 0.5% of an 8B model; more of the tiny
              model, whose matrices are small); a full fine-tune trains all of it, and needs gradients and optimizer
              state for every weight too.
            - *weights MB*: 4-bit weights take about a quarter of the memory of 16-bit ones (an eighth of the
              32-bit ones a CPU uses), 8-bit about half. Embeddings and norms are not quantised, and in the tiny
              model they are a large share, so its saving looks smaller than a real model's.
            - *s/step*: on a CPU quantised weights are slow to use; on a GPU 4-bit costs a little time for a large
              saving in memory, which is why QLoRA is the default.

            The number of trainable parameters follows from the shapes: each adapted matrix of shape (out, in)
            gets r·(in + out) adapter weights. Checked here for LoRA and full fine-tuning:
            """),
        code("""
            print("LoRA trains under 25% of what a full fine-tune trains:",
                  results["LoRA"][0] < 0.25 * results["full fine-tune"][0])
            print("QLoRA trains exactly what LoRA trains:", results["QLoRA"][0] == results["LoRA"][0])
            print("4-bit weights take less memory than 16/32-bit ones:", results["QLoRA"][1] < results["LoRA"][1])
            """, check=True),
        md("""
            ## 2. `max_seq_length`, `dtype` and `load_in_4bit`

            - `max_seq_length` is the longest example, in tokens, that training keeps (longer ones are cut). Memory
              for activations grows with it; 2048 is the guide's setting for testing.
            - `dtype=None` picks the fastest precision the hardware supports: bfloat16 on recent GPUs, float16 on
              older ones such as the T4, float32 on a CPU.
            - `load_in_4bit=True` stores the frozen weights in 4 bits (QLoRA).

            ftlib records what it chose on the model:
            """),
        code("""
            model, tokenizer = load_model(choice.name, max_seq_length=512, load_in_4bit=choice.load_in_4bit)
            print(model.ftlib_settings)
            print("the tokenizer truncates at", tokenizer.model_max_length, "tokens")
            """),
        md("""
            ## 3. How much memory a model needs, by method

            Before you load a model you can estimate what it needs: weights (bytes per parameter times parameters),
            adapters and their optimizer state, and activations, which grow with batch size and sequence length.
            `estimate_memory` does that arithmetic for common sizes; a free Colab or Kaggle T4 has 16 GB.
            """),
        code("""
            from ftlib.notebook import memory_table

            print(memory_table(methods=("qlora", "lora_8bit", "lora", "full"), max_seq_length=2048, batch_size=2,
                               gpu_gb=16))
            """, check=True),
        md("""
            Each row is a representative open model of that size (Llama 3.2 1B and 3B, Llama 3.1 8B and 70B,
            Qwen2.5 14B). QLoRA is what makes 8B and even 14B models trainable on a free T4, where 16-bit LoRA stops
            at about 3B and a full fine-tune at about 1B: a full fine-tune keeps gradients and optimizer state for
            every weight. A 70B model needs a large GPU whatever the method.

            Try other combinations with the controls below (they need a live notebook; in a saved copy you see only
            the starting values):
            """),
        code("""
            from ftlib.notebook import MemoryExplorer

            MemoryExplorer(gpu_gb=16)
            """),
        *footer("02", [
            "LoRA trains small adapters on a frozen model; QLoRA stores that frozen model in 4 bits; 8-bit halves it; "
            "a full fine-tune trains everything.",
            "Adapters are a small share of the parameters, and QLoRA trains exactly the same adapters as LoRA.",
            "`max_seq_length` bounds example length and activation memory; `dtype=None` picks bf16, fp16 or fp32 for you.",
            "Estimate memory before loading: weights, adapters and optimizer state, and activations.",
        ], [
            "Why does QLoRA let an 8B model train on a 16 GB GPU while a full fine-tune of a 1B model does not fit?",
            "A matrix of shape 4096 × 4096 gets a LoRA adapter of rank 16. How many adapter weights is that?",
            "Your training examples are at most 300 tokens long. What `max_seq_length` would you pick, and what does it save?",
            "Why can 4-bit training be slower per step than 16-bit training, and why is it the default anyway?",
        ]),
    ]


def notebook_03():
    return [
        *header("03", [
            "how each data shape becomes training text: question/answer pairs, Alpaca-style instructions, "
            "conversations and raw text",
            "what a chat template is and what the model actually reads",
            "response-only masking: which tokens the loss trains on, made visible",
            "how long your examples are, and how to hold out 20% for testing",
        ], "half a minute"),
        *SETUP,
        md("""
            This notebook only needs the tokenizer, which turns text into the numbers (tokens) a model reads.
            """),
        code("""
            from ftlib.models import load_tokenizer

            tokenizer = load_tokenizer(choice.name, max_seq_length=256)
            print(f"{len(tokenizer)} tokens in the vocabulary; end of turn: {tokenizer.eos_token!r}")
            """),
        md("""
            ## 1. Question/answer pairs

            The usual shape: a question and the answer you want. `format_dataset` wraps each pair in the chat
            template and returns columns you can read: `text` (everything the model sees), `prompt` (up to where
            the answer starts) and `completion` (the answer).
            """),
        code("""
            from ftlib import format_dataset

            pairs = [{"question": "Headline: Velex shares jump after record sales\\nDoes this headline impact Velex "
                                  "positively or negatively?", "answer": "positive"}]
            dataset = format_dataset(pairs, tokenizer)
            print(dataset.column_names)
            print(dataset[0]["text"])
            """, check=True),
        md("""
            ## 2. The chat template

            The markers around the question (a user turn, then an assistant turn, then an end-of-turn token) come
            from the tokenizer's *chat template*. Training and chatting must use the same template, or the model
            sees a format at inference it never saw in training. Here is the template applied to a conversation by
            hand, stopped where the assistant should start writing:
            """),
        code("""
            messages = [{"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": "Is the sky green?"}]
            print(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            """, check=True),
        md("""
            ## 3. Instructions in the Alpaca style

            Instruction data has an `instruction`, an optional `input` and an `output`. ftlib recognises the columns
            and builds the user turn from instruction and input:
            """),
        code("""
            instructions = [{"instruction": "Give the opposite of the word.", "input": "early", "output": "late"},
                            {"instruction": "Name a colour.", "input": "", "output": "blue"}]
            for text in format_dataset(instructions, tokenizer)["text"]:
                print(text, end="\\n---\\n")
            """, check=True),
        md("""
            ## 4. Conversations

            Multi-turn chats come as lists of messages. Every assistant turn can be trained on, the user turns never:
            """),
        code("""
            conversation = [{"messages": [
                {"role": "user", "content": "Hi! Can you help me label headlines?"},
                {"role": "assistant", "content": "Yes. Send me a headline."},
                {"role": "user", "content": "Zanora profits fall sharply."},
                {"role": "assistant", "content": "negative"}]}]
            chats = format_dataset(conversation, tokenizer)
            print(chats[0]["text"])
            """, check=True),
        md("""
            ## 5. Raw text

            To teach a model a style or a domain (code, documents) there is no question: the model learns to
            continue the text, and every token is trained on. `prompt` and `completion` stay empty:
            """),
        code("""
            documents = [{"text": "def add(a, b):\\n    return a + b\\n"},
                         {"text": "The river town holds a market every Friday."}]
            raw = format_dataset(documents, tokenizer)
            print(repr(raw[0]["text"]), repr(raw[0]["prompt"]), repr(raw[0]["completion"]))
            """, check=True),
        md("""
            ## 6. Response-only masking, made visible

            The `labels` column says which tokens the loss uses: a label of -100 means "not trained on". For
            question/answer data only the answer and the end-of-turn token are trained; the question
            is context the model reads but is not asked to reproduce. Without masking, most of the loss would be
            spent on copying questions.
            """),
        code("""
            from ftlib.data import show_example

            show_example(dataset, tokenizer)
            """, check=True),
        md("""
            Inside ⟦ ⟧ is what the model only reads; outside is what it learns to write: the answer and the
            end-of-turn token that teaches it to stop. The same for the conversation: both assistant turns are
            trained, neither user turn.
            """),
        code("""
            show_example(chats, tokenizer)
            """, check=True),
        md("""
            ## 7. How long are the examples?

            Memory and time grow with sequence length, and examples longer than `max_seq_length` are cut. Look at
            the lengths before choosing it. Here for the 1,024 training headlines of the demo task:
            """),
        code("""
            from ftlib.data import length_report
            from ftlib.demo import load_headlines

            headlines = format_dataset(load_headlines("train"), tokenizer, verbose=False)
            print(length_report(headlines))
            lengths = [len(ids) for ids in headlines["input_ids"]]
            """, check=True),
        code("""
            import matplotlib.pyplot as plt

            plt.figure(figsize=(6, 2.5))
            plt.hist(lengths, bins=30)
            plt.xlabel("tokens per example")
            plt.ylabel("examples")
            plt.show()
            """),
        md("""
            Every headline fits in far fewer than 256 tokens, so `max_seq_length=256` cuts nothing and wastes no
            memory; the guide's 2048 suits longer documents.

            ## 8. Hold out 20% for testing

            A model can look perfect on examples it trained on. Keep a part aside that training never sees:
            `test_size=0.2` returns a `DatasetDict` with a "train" and a "test" split, and `train` evaluates on
            the "test" split as it goes.
            """),
        code("""
            split = format_dataset(load_headlines("train"), tokenizer, test_size=0.2, seed=3407)
            print({name: len(part) for name, part in split.items()})
            """, check=True),
        *footer("03", [
            "Question/answer pairs, instructions, conversations and raw text all become one `text` per example.",
            "The chat template adds the role markers and the end-of-turn token; training and chatting must share it.",
            "Masking trains the loss on answers only (labels -100 elsewhere); raw text trains on every token.",
            "Check example lengths before choosing `max_seq_length`; hold out 20% to test on unseen examples.",
        ], [
            "What would the model learn if the questions were not masked out?",
            "Why must the end-of-turn token be trained on?",
            "Your examples are at most 180 tokens long. What happens with `max_seq_length=128`? With 4096?",
            "Why is a held-out score more trustworthy than the training loss?",
        ]),
    ]


def notebook_04():
    return [
        *header("04", [
            "the hyperparameters that matter: learning rate, epochs or steps, LoRA rank and alpha, dropout, "
            "batch size, gradient accumulation, sequence length",
            "how to read training and held-out loss together while training runs",
            "over-fitting and under-fitting, produced for real, and the guide's remedy for each",
        ], "four minutes"),
        *SETUP,
        *LOAD_HEADLINES,
        md("""
            ## 1. The panel

            Each control is one hyperparameter with its usual range. Move them, then run the cells below again: the
            next cells read the panel's current values. Untouched (or run with "Run all"), the panel holds the
            starting values: the guide's defaults, with the learning rate and step count set for this model.
            """),
        code("""
            from ftlib.notebook import HyperparameterPanel

            panel = HyperparameterPanel(max_seq_length=256, **choice.recipe)
            panel.show()
            """),
        code("""
            print(panel.describe())
            """, check=True),
        md("""
            ## 2. Train with the panel's values

            The panel hands its values to `load_model`, `add_lora` and `train`. A held-out set (20% of the data)
            is evaluated about ten times during training, so the plot shows both curves.
            """),
        code("""
            from ftlib import add_lora, evaluate, format_dataset, load_model, train
            from ftlib.notebook import LiveLossPlot

            model, tokenizer = load_model(choice.name, load_in_4bit=choice.load_in_4bit, **panel.load_kwargs())
            model = add_lora(model, use_gradient_checkpointing=not choice.tiny, **panel.lora_kwargs())
            data = format_dataset(train_rows, tokenizer, test_size=0.2, seed=3407)
            history = train(model, tokenizer, data, output_dir="ftlib_outputs/04",
                            callbacks=[LiveLossPlot("Your settings")], **panel.train_kwargs())
            """),
        md("Score it on the held-out companies, and ask ftlib to read the curves:"),
        code("""
            from ftlib import diagnose

            test_set = format_dataset(test_rows, tokenizer)
            print(f"held-out accuracy: {evaluate(model, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy:.2f}")
            print(diagnose(history))
            """),
        md("""
            Both losses fall together and the held-out companies get the right label: a good fit.
            The next sections break this on purpose, in both directions.

            ## 3. Under-fitting: too small a learning rate

            With the learning rate a hundred times smaller the adapters barely move: the loss stays high and the
            model never learns to answer with a label. Under-fitting looks like a loss that hardly falls. (This run
            skips the held-out set, to save time: the training loss alone shows it.)
            """),
        code("""
            slow, _ = load_model(choice.name, load_in_4bit=choice.load_in_4bit, max_seq_length=256)
            slow = add_lora(slow, r=16, use_gradient_checkpointing=not choice.tiny)
            low_lr = dict(choice.recipe, learning_rate=choice.recipe["learning_rate"] / 100)
            history_slow = train(slow, tokenizer, data["train"], output_dir="ftlib_outputs/04",
                                 callbacks=[LiveLossPlot("Learning rate / 100")], **low_lr)
            print(diagnose(history_slow))
            """),
        md("""
            The guide's remedy for under-fitting: a higher learning rate, more steps or epochs, or a larger rank.
            Here the remedy is to go back to the learning rate that worked; compare the two runs' final losses and
            accuracies:
            """),
        code("""
            slow_accuracy = evaluate(slow, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy
            good_accuracy = evaluate(model, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy
            print(f"{'learning rate':>14}{'final loss':>12}{'accuracy':>10}")
            print(f"{low_lr['learning_rate']:>14.0e}{history_slow.final_loss:>12.2f}{slow_accuracy:>10.2f}")
            print(f"{choice.recipe['learning_rate']:>14.0e}{history.final_loss:>12.2f}{good_accuracy:>10.2f}")
            """),
        code("""
            print("the smaller learning rate ended with a higher training loss:", history_slow.final_loss > history.final_loss)
            """, check=True),
        md("""
            ## 4. Over-fitting: many epochs on a small set

            Over-fitting is the opposite: the model memorises its training examples instead of the pattern. Give it
            only 8 examples, a generous rank and 40 epochs, and watch the two curves part: the training loss
            heads for 0 while the held-out loss turns and rises.
            """),
        code("""
            small = format_dataset(train_rows[:8], tokenizer, verbose=False)
            held_out = format_dataset(test_rows, tokenizer, verbose=False)
            overfit, _ = load_model(choice.name, load_in_4bit=choice.load_in_4bit, max_seq_length=256)
            overfit = add_lora(overfit, r=64, lora_alpha=64, use_gradient_checkpointing=not choice.tiny)
            history_overfit = train(overfit, tokenizer, small, eval_dataset=held_out, num_train_epochs=40,
                                    learning_rate=choice.recipe["learning_rate"], eval_steps=4,
                                    output_dir="ftlib_outputs/04", callbacks=[LiveLossPlot("8 examples, 40 epochs")])
            print(diagnose(history_overfit))
            """),
        md("Read the numbers behind the curves: the lowest held-out loss came early, and training went on past it."),
        code("""
            best = min(history_overfit.eval_loss)
            print(f"final training loss {history_overfit.final_loss:.3f}")
            print(f"held-out loss: lowest {best:.2f} at step {history_overfit.best_step}, final {history_overfit.eval_loss[-1]:.2f}")
            """),
        code("""
            print("training loss near 0:", history_overfit.final_loss < 0.1)
            print("held-out loss rose after its lowest point:", history_overfit.eval_loss[-1] > min(history_overfit.eval_loss))
            """, check=True),
        md("""
            The guide's remedies for over-fitting: more (or more varied) data, fewer epochs, a smaller learning
            rate, dropout or weight decay, and stopping at the lowest held-out loss. Here the most effective remedy
            is the first: the same rank and learning rate on all the training data, with a little dropout. Early stopping
            (`early_stopping_patience=2`) stops after two evaluations without improvement and keeps the best
            weights, so a long run costs nothing.
            """),
        code("""
            remedy, _ = load_model(choice.name, load_in_4bit=choice.load_in_4bit, max_seq_length=256)
            remedy = add_lora(remedy, r=64, lora_alpha=64, lora_dropout=0.1, use_gradient_checkpointing=not choice.tiny)
            history_remedy = train(remedy, tokenizer, data, learning_rate=choice.recipe["learning_rate"],
                                   max_steps=choice.recipe["max_steps"], early_stopping_patience=2,
                                   output_dir="ftlib_outputs/04_remedy", callbacks=[LiveLossPlot("All the data, early stopping")])
            print(diagnose(history_remedy))
            print(f"held-out accuracy: {evaluate(remedy, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy:.2f}")
            """),
        md("""
            With 819 examples instead of 8 the held-out loss follows the training loss down instead of parting
            from it.
            """),
        *footer("04", [
            "The learning rate matters most: too low under-fits (the loss hardly falls), too high diverges.",
            "Under-fitting: both losses stay high. Remedies: a higher learning rate, more steps, a larger rank.",
            "Over-fitting: training loss near 0 while held-out loss rises. Remedies: more data, fewer epochs, "
            "dropout, weight decay, early stopping at the best held-out loss.",
            "Rank r sets the adapters' capacity; alpha (at least r) scales their update; effective batch = batch × accumulation.",
        ], [
            "Training loss 0.02, held-out loss rising since step 40. What happened, and what do you change first?",
            "Both losses are flat near their starting value after 60 steps. Name two things to try.",
            "Why does early stopping need a held-out set?",
            "Batch size 2 with accumulation 4, or batch size 8 with accumulation 1: what is the same, what differs?",
        ]),
    ]


def notebook_05():
    return [
        *header("05", [
            "what your machine has: GPU, its memory, bf16 support, package versions, and what to fix",
            "which model sizes and methods fit which GPU",
            "how to install ftlib on Colab, Kaggle and your own machine",
        ], "half a minute"),
        *SETUP,
        md("""
            ## 1. The environment check

            `check_environment` looks at the GPU (its name, memory, and whether it supports bfloat16), the
            computer's memory and disk, and the versions of the packages ftlib needs. Every finding is a sentence;
            a problem says what to do about it.
            """),
        code("""
            from ftlib.environment import check_environment

            report = check_environment()
            print(report)
            """),
        md("""
            Read it top to bottom:

            - **GPU**: none is fine for the tiny demo model. For real models, Colab and Kaggle offer a free T4 with
              16 GB. The T4 has no bfloat16, so ftlib trains in float16 there; Ampere and newer GPUs (A100, L4,
              RTX 30xx and later, H100) use bfloat16, which is more robust to large values.
            - **Packages**: each must be inside the range ftlib was tested with.

            A problem looks like this, for a package that is not installed:
            """),
        code("""
            missing = check_environment(packages=("torch", "a-package-that-is-not-installed"))
            for problem in missing.problems:
                print(problem)
            print("ready:", missing.ok)
            """, check=True),
        md("""
            ## 2. What fits your GPU

            GPU memory decides which model and method you can train. The estimate adds the weights, the adapters
            with their optimizer state, and the activations of one batch. For the guide's settings (sequence 2048,
            batch 2) on common GPUs:
            """),
        code("""
            from ftlib.notebook import COMMON_SIZES
            from ftlib.notebook.memory_explorer import estimate_for_size

            gpus = {"T4 (free Colab/Kaggle)": 16, "L4 / A10": 24, "A100 40 GB": 40, "A100/H100 80 GB": 80}
            for size in COMMON_SIZES:
                for method in ("qlora", "lora"):
                    need = estimate_for_size(size, method, max_seq_length=2048, batch_size=2)
                    fits = [gpu for gpu, gigabytes in gpus.items() if need.fits(gigabytes)]
                    print(f"{size:>4} {method:6} ~{need.total_gb:5.1f} GB: smallest GPU: {fits[0] if fits else 'several GPUs'}")
            """, check=True),
        md("""
            When it does not fit: load in 4 bits, lower the batch size to 1 and raise gradient accumulation to keep
            the effective batch, shorten `max_seq_length`, or pick a smaller model.

            ## 3. Installing

            **Colab** (Runtime > Change runtime type > T4 GPU) and **Kaggle** (Settings > Accelerator > GPU T4):
            torch, transformers, peft, accelerate and datasets are preinstalled; trl, bitsandbytes and ftlib are not.
            ftlib is not on PyPI, so give the setup cell a copy of its repository, in one of three ways:

            - clone it into the working folder, in a cell of its own: `!git clone <ftlib's repository URL>`
              (on Kaggle, switch Internet on in the settings first);
            - upload the repository there (a zip, unpacked with `!unzip`): `/content` on Colab,
              `/kaggle/working` on Kaggle;
            - or set `FTLIB_SOURCE` in a cell above the setup cell: `%env FTLIB_SOURCE=git+https://...` (a git URL),
              or the path of a wheel or a folder. A wheel suits Kaggle, where attached data in `/kaggle/input` is
              read-only: build it once with `pip wheel --no-deps .` in a clone.

            The setup cell then runs `pip install <that copy> "ftlib[notebooks]"`, which adds ftlib, trl,
            bitsandbytes and the widgets; the demo model and the headline data come inside the package. Restart the
            runtime once if an import fails afterwards.

            **Your own machine**, with an NVIDIA GPU and a recent driver:

            ```bash
            git clone <ftlib's repository URL> ftlib && cd ftlib
            python -m venv .venv && source .venv/bin/activate
            pip install torch                      # pick the CUDA build on pytorch.org if pip's default does not match your driver
            pip install -e ".[notebooks]"           # ftlib, transformers, peft, trl, accelerate, datasets, bitsandbytes, ipywidgets
            python -c "from ftlib.environment import check_environment; print(check_environment())"
            ```

            Without a GPU everything still works on the tiny demo model; real models would take hours per step.
            The check below is what the setup cell prints; it is worth running after every install:
            """),
        code("""
            print(check_environment().summary())
            """),
        md("""
            And the precision ftlib will train in on this machine (`dtype=None` picks it):
            """),
        code("""
            print(report.precision)
            """),
        *footer("05", [
            "`check_environment()` reports GPU, memory, bf16 support and package versions, and says how to fix problems.",
            "A free T4 (16 GB, float16 only) trains models up to about 8B parameters with QLoRA.",
            "ftlib is not on PyPI: clone or upload its repository (or set `FTLIB_SOURCE`) and the setup cell installs it with trl and bitsandbytes.",
            "When memory is short: 4-bit, batch 1 with more accumulation, shorter sequences, a smaller model.",
        ], [
            "Why does ftlib train in float16 on a T4 but bfloat16 on an A100?",
            "An 8B model does not fit your GPU with LoRA. What two changes would you try first?",
            "After installing on Colab an import fails. What do you do?",
            "On a fresh Colab runtime the setup cell stops: ftlib is not installed. Name two ways to fix that.",
            "Why does the tiny demo model not need a GPU?",
        ]),
    ]


def notebook_06():
    return [
        *header("06", [
            "the guide's training defaults and what each one does",
            "training with a held-out set and watching both losses live",
            "memory and time before and after training",
            "held-out evaluation: loss, perplexity, accuracy",
            "how to read the loss: settling near 0.5 is healthy, 0 is not",
        ], "two minutes"),
        *SETUP,
        *LOAD_HEADLINES,
        *LOAD_MODEL,
        md("""
            ## 1. Before training: memory and time

            Note what the model takes now, to compare after training. On a GPU this is the memory PyTorch has
            reserved on it; on a CPU, the memory of this Python process.
            """),
        code("""
            from ftlib.speed.memory import measured_usage

            memory_before = measured_usage()
            print(memory_before)
            """),
        md("""
            ## 2. Hold out 20% and train with the guide's defaults

            The guide's defaults:

            - `per_device_train_batch_size=2`, `gradient_accumulation_steps=4`: 2 examples at a time, 4 times, then
              one update; effective batch = 2 × 4 = 8.
            - `max_steps=60` (or `num_train_epochs=1` to see every example once).
            - `learning_rate=2e-4`, the usual LoRA rate.

            The held-out 20% is evaluated about ten times during the run.
            """),
        code("""
            from ftlib import add_lora, format_dataset, load_model, train
            from ftlib.notebook import LiveLossPlot

            model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=not choice.tiny)
            data = format_dataset(train_rows, tokenizer, test_size=0.2, seed=3407)
            history = train(model, tokenizer, data, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                            max_steps=60, learning_rate=2e-4, output_dir="ftlib_outputs/06",
                            callbacks=[LiveLossPlot("The guide's defaults")])
            """),
        md("""
            ## 3. Reading the loss

            `diagnose` reads a history the way the guide does: a loss that settles near 0.5 is healthy for real
            data; one that is still falling steeply wants more steps; one near 0 has memorised its examples.
            """),
        code("""
            from ftlib import diagnose

            print(f"training loss {history.loss[0]:.2f} -> {history.final_loss:.2f}; "
                  f"held-out {history.eval_loss[0]:.2f} -> {history.eval_loss[-1]:.2f}")
            print(diagnose(history))
            """),
        md("""
            On a real model these 60 steps are a sensible first run. The tiny model learns more slowly (it has
            read millions of times less text than a real one), so after 60 steps its loss is still high and
            falling: the diagnosis says under-fitted and suggests a higher learning rate and more steps. Start
            again from fresh adapters with the recipe that suits this model (`choice.recipe`):
            """),
        code("""
            model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
            model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=not choice.tiny)
            history_recipe = train(model, tokenizer, data, output_dir="ftlib_outputs/06",
                                   callbacks=[LiveLossPlot(f"The model's recipe: {choice.recipe}")], **choice.recipe)
            print(diagnose(history_recipe))
            """),
        md("""
            The answers in this task are a single word, which the model becomes sure of, so the loss can fall
            lower than the 0.5 typical of free-form text without memorising anything; the held-out loss falling
            along with it is what shows that.

            ## 4. Held-out evaluation

            `evaluate` measures three things on examples training never saw: the loss (and perplexity, e to the
            loss: "how many tokens the model hesitates between"), and task accuracy from generated answers.
            """),
        code("""
            from ftlib import evaluate

            test_set = format_dataset(test_rows, tokenizer)
            result = evaluate(model, tokenizer, test_set, max_new_tokens=4)
            print(f"held-out loss {result.loss:.3f}, perplexity {result.perplexity:.2f}, accuracy {result.accuracy:.2f}")
            """),
        code("""
            print("held-out accuracy at least 0.8:", result.accuracy >= 0.8)
            print("held-out loss fell during training:", history_recipe.eval_loss[-1] < history_recipe.eval_loss[0])
            """, check=True),
        md("""
            ## 5. After training: memory and time

            Training adds gradients and optimizer state for the adapters, and activations for a batch; the peak is
            what your GPU must hold.
            """),
        code("""
            memory_after = measured_usage()
            print("before:", memory_before)
            print("after: ", memory_after)
            print(f"training time: {history.seconds:.0f} s for {history.steps[-1]} steps, then "
                  f"{history_recipe.seconds:.0f} s for {history_recipe.steps[-1]} steps")
            """),
        *footer("06", [
            "Defaults: batch 2, accumulation 4 (effective batch 8), 60 steps or 1-3 epochs, learning rate 2e-4.",
            "Hold out 20%: the held-out loss is the honest one; the training loss can fall for the wrong reasons.",
            "A loss settling near 0.5 is healthy for free-form text; near 0 means memorising.",
            "Evaluate on held-out examples with the metric you care about, here accuracy.",
        ], [
            "What is the effective batch with batch size 1 and accumulation 8, and why would you choose that?",
            "The training loss is 0.01 after three epochs. Is that good news?",
            "Perplexity is 1.2 on held-out data. What does that say about the model's certainty?",
            "Why did the tiny model need more than the guide's 60 steps?",
        ]),
    ]


def notebook_07():
    return [
        *header("07", [
            "generating answers: one prompt, a batch, streaming, and a multi-turn chat",
            "saving a LoRA adapter, loading it back, and checking the answers are identical",
            "exporting merged weights for vLLM and Ollama",
            "pushing to the Hugging Face Hub without ever printing your token",
        ], "two minutes"),
        *SETUP,
        *LOAD_HEADLINES,
        *LOAD_MODEL,
        md("""
            First, a fine-tuned model to run and save: the one-minute fine-tune of notebook 01.
            """),
        code("""
            from ftlib import add_lora, format_dataset, train

            model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=not choice.tiny)
            history = train(model, tokenizer, format_dataset(train_rows, tokenizer), output_dir="ftlib_outputs/07",
                            **choice.recipe)
            print(f"trained {history.steps[-1]} steps, final loss {history.final_loss:.2f}")
            """),
        md("""
            ## 1. Generation

            `generate` wraps a question in the chat template, writes the reply greedily (`temperature=0`, the same
            reply every time) and stops at the end-of-turn token. `max_new_tokens` caps the reply: a label needs a
            few tokens, a paragraph a few hundred.
            """),
        code("""
            from ftlib import generate

            question = test_rows[0]["question"]
            print(question)
            print("->", generate(model, tokenizer, question, max_new_tokens=8))
            """),
        md("A list of prompts is generated as one batch (padded on the left), which is much faster than one by one:"),
        code("""
            questions = [row["question"] for row in test_rows[:4]]
            for row, reply in zip(test_rows, generate(model, tokenizer, questions, max_new_tokens=8)):
                print(f"expected {row['answer']!r:12} got {reply!r}")
            """),
        md("""
            ## 2. Streaming

            `stream=True` prints the reply piece by piece as it is written, which is what a chat interface shows.
            Sampling (`temperature` above 0) gives varied replies; `seed` makes them repeatable.
            """),
        code("""
            reply = generate(model, tokenizer, question, max_new_tokens=8, stream=True, temperature=0.7, seed=0)
            """),
        md("""
            ## 3. A multi-turn chat

            `chat` keeps the conversation in a list, so each reply sees everything said before.
            """),
        code("""
            from ftlib import chat

            conversation = []
            for row in test_rows[1:3]:
                print("you:  ", row["question"].splitlines()[0])
                print("model:", chat(model, tokenizer, row["question"], conversation, max_new_tokens=8))
            print(len(conversation), "messages in the conversation")
            """),
        md("""
            ## 4. Save the LoRA adapter, and load it back

            `save` with the default `method="lora"` writes only the adapters and the tokenizer: a few hundred KB for
            the tiny model, about 100 MB for an 8B one. The folder records which base model it belongs to, so
            `load_model(folder)` loads the base and then the adapter.
            """),
        code("""
            from ftlib import load_model, save

            saved = save(model, tokenizer, "ftlib_outputs/07/adapter", overwrite=True)
            """),
        code("""
            reloaded, reloaded_tokenizer = load_model("ftlib_outputs/07/adapter", max_seq_length=256,
                                                      load_in_4bit=choice.load_in_4bit)
            again = generate(reloaded, reloaded_tokenizer, questions, max_new_tokens=8)
            print(again)
            """),
        code("""
            print("the reloaded adapter gives identical answers:", again == generate(model, tokenizer, questions, max_new_tokens=8))
            """, check=True),
        md("""
            ## 5. Merged weights, vLLM and Ollama

            Serving tools want one model, not a base plus an adapter. `method="merged_16bit"` adds the adapters
            into the weights and saves a plain 16-bit model that `transformers`, vLLM and others load directly:

            ```bash
            vllm serve ftlib_outputs/07/merged        # an OpenAI-compatible server
            ```
            """),
        code("""
            saved = save(model, tokenizer, "ftlib_outputs/07/merged", method="merged_16bit", overwrite=True)
            """),
        md("""
            For Ollama, `method="ollama"` writes the weights plus a `Modelfile` carrying the chat template and the
            stop token; then `ollama create my-model -f Modelfile` inside that folder, and `ollama run my-model`.
            """),
        code("""
            from pathlib import Path

            saved = save(model, tokenizer, "ftlib_outputs/07/ollama", method="ollama", overwrite=True)
            print((Path("ftlib_outputs/07/ollama") / "Modelfile").read_text()[:600])
            """),
        md("""
            ## 6. Pushing to the Hugging Face Hub

            Pushing needs a token with write access. Never type it into a notebook cell (notebooks get shared, with
            their outputs): on Colab add it under Secrets as `HF_TOKEN`, elsewhere set the environment variable.
            The cell below pushes only when a token is there, and never prints it.
            """),
        code("""
            import os

            token = os.environ.get("HF_TOKEN")
            if token:
                save(model, tokenizer, "ftlib_outputs/07/hub", overwrite=True, push_to_hub=True,
                     repo_id="your-name/headline-adapter", token=token)  # a new repository starts private
                print("pushed to https://huggingface.co/your-name/headline-adapter")
            else:
                print("No HF_TOKEN set: skipped the push (set it to push your adapter).")
            """),
        *footer("07", [
            "`generate` answers one prompt or a batch; `stream=True` shows the reply as it is written; `chat` keeps a conversation.",
            "`save(..., method='lora')` writes a small adapter; `load_model(folder)` brings back identical answers.",
            "`merged_16bit` gives one plain model for vLLM or transformers; `ollama` adds a Modelfile.",
            "Keep the Hub token in a secret or environment variable, never in a cell.",
        ], [
            "Why does greedy decoding (`temperature=0`) give the same reply every time, and when would you sample instead?",
            "When would you ship an adapter rather than merged weights?",
            "What does the Modelfile have to carry so the model stops at the end of its reply?",
            "Why is printing a token in a notebook risky even if you delete the cell later?",
        ]),
    ]


def notebook_08():
    return [
        *header("08", [
            "the whole path in six calls",
            "where to go next: preference tuning, reasoning with reinforcement learning, continued pretraining, vision",
        ], "a minute"),
        *SETUP,
        md("""
            ## 1. The whole path, once more

            Everything from notebooks 01 to 07 in one place: load, add adapters, format, train, try, save.
            """),
        code("""
            from ftlib import add_lora, format_dataset, generate, load_model, save, train
            from ftlib.demo import load_headlines

            model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
            model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=not choice.tiny)
            data = format_dataset(load_headlines("train"), tokenizer, test_size=0.2, seed=3407)
            history = train(model, tokenizer, data, output_dir="ftlib_outputs/08", **choice.recipe)
            print(generate(model, tokenizer, load_headlines("test")[0]["question"], max_new_tokens=8))
            saved = save(model, tokenizer, "ftlib_outputs/08/adapter", overwrite=True)
            """),
        md("""
            And how that run went, in the guide's terms:
            """),
        code("""
            from ftlib import diagnose

            print(diagnose(history))
            """),
        md("""
            ## 2. What to try next

            - **Your own data.** Replace `load_headlines` with your rows (notebook 03 shows the shapes), hold out
              20%, and start from the guide's defaults.
            - **A larger model.** Set `FTLIB_MODEL` (for example `Qwen/Qwen2.5-1.5B-Instruct` or
              `meta-llama/Llama-3.2-3B-Instruct`) and rerun these notebooks on a GPU; notebook 05 tells you what fits.
            - **Preference tuning (DPO, ORPO, KTO).** Instead of one right answer per prompt, show a *chosen* and a
              *rejected* answer and train the model to prefer the first. TRL's `DPOTrainer`, `ORPOTrainer` and
              `KTOTrainer` take such pairs, and a LoRA model from `add_lora` trains with them as it is.
            - **Reasoning with GRPO.** Reinforcement learning from a reward you compute (is the maths answer right?
              does the code pass its tests?): the model samples several answers and learns from their scores. TRL's
              `GRPOTrainer`.
            - **Continued pretraining.** Raw text of your domain (notebook 03, section 5) teaches vocabulary and style
              before an instruction fine-tune.
            - **Vision.** Vision-language models fine-tune the same way, on image and text pairs.

            A preference pair looks like this; the prompt is shared, the answers compete:
            """),
        code("""
            pair = {"prompt": "Does this headline impact Velex positively or negatively?\\nVelex shares jump.",
                    "chosen": "positive", "rejected": "The headline talks about shares."}
            for key, value in pair.items():
                print(f"{key:>9}: {value}")
            """, check=True),
        *footer("08", [
            "load_model → add_lora → format_dataset → train → generate → save: the whole of supervised fine-tuning.",
            "Check the environment first, hold out data, read both losses, evaluate on what you care about.",
            "Next steps build on the same model: preference tuning (DPO, ORPO, KTO), GRPO, continued pretraining, vision.",
        ], [
            "Which of the six calls would you change first to fine-tune on your own data?",
            "What does preference tuning learn that supervised fine-tuning cannot?",
            "When would continued pretraining come before instruction fine-tuning?",
        ]),
    ]


BUILDERS = {"01": notebook_01, "02": notebook_02, "03": notebook_03, "04": notebook_04,
            "05": notebook_05, "06": notebook_06, "07": notebook_07, "08": notebook_08}


def build(number):
    notebook = new_notebook(cells=BUILDERS[number]())
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{number}-{index:02d}"  # stable ids: rebuilding changes nothing that did not change
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return notebook


def path_of(number):
    return HERE / f"{TITLES[number][0]}.ipynb"


def execute(path, timeout=900):
    """Run a notebook top to bottom in a fresh kernel (working directory: notebooks/) and save its outputs."""
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        nbformat.write(notebook, path)  # a failed run keeps its outputs up to the error, to read it


def main(arguments):
    wanted = [argument for argument in arguments if not argument.startswith("--")] or list(BUILDERS)
    numbers = [number for number in BUILDERS if any(number.startswith(prefix[:2]) for prefix in wanted)]
    for number in numbers:
        nbformat.write(build(number), path_of(number))
        print("wrote", path_of(number).name)
    if "--execute" in arguments:
        import time

        for number in numbers:
            started = time.time()
            execute(path_of(number))
            print(f"executed {path_of(number).name} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
