"""Whole fine-tuning runs of the demo world, as functions: what `ftlib.launch` runs in every process.

A function handed to `launch` must load, train and save by itself, inside the process that runs it (the
launched processes each take their own GPU, which a model loaded earlier in the notebook would not be on).
Notebook 05 prints this file's function and launches it.
"""


def headline_fine_tune(per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=4, save_to=None):
    """Fine-tune ftlib-tiny's LoRA adapters on 64 headline rows; returns the TrainingHistory.

    Example: `history = launch(headline_fine_tune, 2, num_processes=2)  # 2 rows x 4 x 2 processes a step`

    Under torchrun or `launch` every process runs all of it: load_model puts each copy on its own GPU (the
    CPU here), train splits every global batch among the processes, and save writes once, from rank 0.
    """
    from ftlib import add_lora, format_dataset, load_model, save, train
    from ftlib.demo import load_headlines

    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    model = add_lora(model)
    dataset = format_dataset(load_headlines("train")[:64], tokenizer)
    history = train(model, tokenizer, dataset, per_device_train_batch_size=per_device_train_batch_size,
                    gradient_accumulation_steps=gradient_accumulation_steps, max_steps=max_steps,
                    learning_rate=1e-3,  # the tiny model's rate (notebook 04 says why)
                    verbose=False)
    if save_to is not None:
        save(model, tokenizer, save_to, overwrite=True, verbose=False)
    return history
