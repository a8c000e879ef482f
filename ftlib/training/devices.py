"""One GPU per process: what `train` does when a notebook sees several GPUs (Kaggle's "GPU T4 x2").

Started as one Python process on a machine with several GPUs, transformers' Trainer counts them all
(`TrainingArguments.n_gpu`) and wraps the model in `nn.DataParallel`, which TRL's trainers refuse. ftlib
trains on cuda:0 instead, where `load_model` put the model, and says how to use every GPU: one process per
GPU, started by torchrun or accelerate launch.
"""

from ftlib.environment import several_gpus_note

_noted = set()  # GPU counts already noted in this process: the note is printed once, not at every train call


def train_on_one_gpu(config):
    """Make transformers' Trainer use one GPU (cuda:0) when this process sees several; returns `config`.

    Example: `trainer = FtlibTrainer(model=model, args=train_on_one_gpu(config), ...)`

    `config.n_gpu` counts the visible GPUs the first time it is read, and is 1 under torchrun or accelerate
    launch. Pinning it to 1 is what the Trainer itself does for a model placed with a `device_map` across
    GPUs: the batch of a step stays `per_device_train_batch_size` (DataParallel would multiply it by the
    GPU count and split it), so the effective batch, the steps per epoch and the loss are those of one GPU.
    """
    count = config.n_gpu  # reading it sets the device up (cached): cuda:0, and the number of GPUs visible
    if count > 1:
        config._n_gpu = 1  # transformers' own switch: Trainer sets it to 1 for model-parallel models
        if count not in _noted:
            _noted.add(count)
            print(several_gpus_note(count))
    return config
