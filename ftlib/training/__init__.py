"""Step 6 of the guide, training: the `train` call and what watches it.

    run.py        train: checks the settings, prepares the data, builds the trainer, runs it (one screen)
    trainer.py    FtlibTrainer (TRL's SFTTrainer with the model's own loss on a CPU) and the progress callbacks
    history.py    TrainingHistory: every logged loss, for plots and diagnosis
    safety.py     the non-finite-loss guard, early stopping, checkpoints to resume from, out-of-memory advice
    diagnosis.py  diagnose: over-fitting, under-fitting, divergence or healthy, in words
    distributed.py  several processes (torchrun, accelerate launch, launch from a notebook): DDP, FSDP2
    methods.py    how a method (sft, dpo, orpo, kto, pretrain, grpo) plugs into train: config, trainer, data
    preference.py DPO, ORPO, KTO: preference rows checked, the LoRA reference, preference_accuracy
    pretraining.py  continued pretraining on raw text: packing, the embeddings' own rate, perplexity
    log_probabilities.py  TRL's fused log-probabilities in plain PyTorch where Triton cannot run (a CPU)
    grpo.py       GRPO: prompts checked, the group size, the adapters' frozen reference, evaluate_rewards
    rewards.py    ready reward functions: format, exact answer, partial credit, length guard
    reward_diagnosis.py  diagnose for GRPO runs: no reward, no learning signal, cut off, NaN in float16
"""

from ftlib.training.diagnosis import Diagnosis, diagnose
from ftlib.training.history import TrainingHistory
from ftlib.training.run import train

__all__ = ["Diagnosis", "TrainingHistory", "diagnose", "train"]
