"""TrainingHistory: what `train` returns, in a shape a plot or a diagnosis can read."""

from dataclasses import dataclass, field

# Log entries the history keeps in its own fields, or that only describe the run's pace.
NOT_METRICS = {"loss", "eval_loss", "learning_rate", "epoch", "step", "total_flos", "train_runtime",
               "train_samples_per_second", "train_steps_per_second", "train_loss", "eval_runtime",
               "eval_samples_per_second", "eval_steps_per_second"}


@dataclass
class TrainingHistory:
    """Losses logged during one training run.

    Example:
        >>> history = TrainingHistory(steps=[1, 2], loss=[2.0, 1.5])
        >>> history.final_loss
        1.5
    """

    steps: list = field(default_factory=list)  # optimizer step of each training-loss entry
    loss: list = field(default_factory=list)  # training loss, averaged over the logging window
    learning_rate: list = field(default_factory=list)
    eval_steps: list = field(default_factory=list)  # optimizer step of each held-out evaluation
    eval_loss: list = field(default_factory=list)
    epochs: list = field(default_factory=list)  # fractional epoch of each training-loss entry
    seconds: float = 0.0  # wall-clock training time
    stopped_reason: str = "finished"  # finished | early_stopping | interrupted | nan_loss | ...
    best_step: int | None = None  # step of the lowest held-out loss, when there was evaluation
    # Every other number the trainer logs, by its TRL name ("rewards/margins" for DPO, "reward" and "kl" for
    # GRPO, "eval_rewards/accuracies", ...): {name: {"steps": [...], "values": [...]}}
    metrics: dict = field(default_factory=dict)
    # train's choice of recomputed and offloaded layers (ftlib/speed/memory_budget.py), None where none was made
    memory_plan: dict | None = None

    @property
    def final_loss(self):
        """The last logged training loss, or None before any step was logged."""
        return self.loss[-1] if self.loss else None

    @property
    def final_eval_loss(self):
        return self.eval_loss[-1] if self.eval_loss else None

    def record(self, logs, step, epoch=None):
        """Add one `Trainer` log entry (a dict with 'loss' or 'eval_loss')."""
        if "loss" in logs:
            self.steps.append(step)
            self.loss.append(float(logs["loss"]))
            self.learning_rate.append(float(logs.get("learning_rate", float("nan"))))
            self.epochs.append(epoch)
        if "eval_loss" in logs:
            self.eval_steps.append(step)
            self.eval_loss.append(float(logs["eval_loss"]))
        for name, value in logs.items():
            if name not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                series = self.metrics.setdefault(name, {"steps": [], "values": []})
                series["steps"].append(step)
                series["values"].append(float(value))

    def metric(self, name):
        """(steps, values) of one logged metric, e.g. history.metric("rewards/margins"); empty lists if never logged.

        Example:
            >>> steps, margins = history.metric("rewards/margins")
        """
        series = self.metrics.get(name, {"steps": [], "values": []})
        return series["steps"], series["values"]

    def to_dict(self):
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values):
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})

    def plot(self, path=None, ax=None, title="Loss"):
        """Draw training (and held-out) loss; save to `path` as PNG when given. Returns the figure."""
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure = ax.figure if ax is not None else plt.figure(figsize=(6, 3.5))
        ax = ax or figure.add_subplot(1, 1, 1)
        ax.plot(self.steps, self.loss, label="training loss")
        if self.eval_loss:
            ax.plot(self.eval_steps, self.eval_loss, "o-", label="held-out loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        if path is not None:
            figure.tight_layout()
            figure.savefig(path, dpi=100)
        return figure
