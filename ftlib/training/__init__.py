"""Step 6 of the guide, training: the `train` call and what watches it.

    run.py        train: checks the settings, prepares the data, builds the trainer, runs it (one screen)
    trainer.py    FtlibTrainer (TRL's SFTTrainer with the model's own loss on a CPU) and the progress callbacks
    history.py    TrainingHistory: every logged loss, for plots and diagnosis
    safety.py     the non-finite-loss guard, early stopping, checkpoints to resume from, out-of-memory advice
    diagnosis.py  diagnose: over-fitting, under-fitting, divergence or healthy, in words
"""

from ftlib.training.diagnosis import Diagnosis, diagnose
from ftlib.training.history import TrainingHistory
from ftlib.training.run import train

__all__ = ["Diagnosis", "TrainingHistory", "diagnose", "train"]
