"""A live loss plot for notebooks: a `TrainerCallback` that redraws an inline image as training runs.

It draws with plain matplotlib into a PNG and replaces one output through an IPython display handle,
so it needs no ipympl or widget JavaScript: it works the same in Jupyter, Colab, VS Code and a headless
kernel (nbval, nbconvert), and the last picture stays in the saved notebook. Under plain Python (no
IPython) it prints a progress line now and then instead.
"""

import io
import math
import time

from transformers import TrainerCallback


class LiveLossPlot(TrainerCallback):
    """Training loss (and held-out loss, when there is evaluation) redrawn while `train` runs.

    Example:
        >>> history = train(model, tokenizer, dataset, callbacks=[LiveLossPlot()])
        >>> history = train(model, tokenizer, pairs, method="dpo", callbacks=[LiveLossPlot(method="dpo")])

    metrics: other logged numbers to draw in a second panel beside the loss, e.g. ["rewards/margins"]
    (held-out values, logged as "eval_<name>", are drawn too); method: a train method whose main metrics
    are drawn when metrics is None (DPO: rewards/margins and rewards/accuracies).
    """

    shows_progress = True  # train() can skip its own printed progress lines when this callback is present

    def __init__(self, title="Loss while training", redraw_seconds=1.0, figsize=(6.4, 3.2), metrics=None, method=None):
        self.title = title
        self.metrics = list(metrics) if metrics is not None else _main_metrics(method)
        self.redraw_seconds = redraw_seconds  # a PNG costs ~30 ms: redrawing every step would slow tiny runs
        self.figsize = figsize
        self._reset()

    def _reset(self):
        self.steps, self.loss, self.eval_steps, self.eval_loss = [], [], [], []
        # name -> (steps, values), for each metric and its held-out "eval_" twin
        self.metric_points = {name: ([], []) for metric in self.metrics for name in (metric, f"eval_{metric}")}
        self.max_steps = 0
        self.step = 0
        self.start_time = time.time()
        self._last_draw = 0.0
        self._last_progress = 0.0
        self._plot_handle = self._progress_handle = None
        self._in_ipython = _running_in_ipython()
        self.figure = None

    # Trainer events ------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._reset()
        self.max_steps = state.max_steps or 0
        if self._in_ipython:
            from IPython.display import display

            self._plot_handle = display(_Text("(the loss plot appears after the first logged step)"), display_id=True)
            self._progress_handle = display(self._progress(), display_id=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        if time.time() - self._last_progress >= 0.5:
            self._show_progress()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.step = state.global_step
        if "loss" in logs:
            self.steps.append(state.global_step)
            self.loss.append(float(logs["loss"]))
        if "eval_loss" in logs:
            self.eval_steps.append(state.global_step)
            self.eval_loss.append(float(logs["eval_loss"]))
        for name, (steps, values) in self.metric_points.items():
            if isinstance(logs.get(name), (int, float)):
                steps.append(state.global_step)
                values.append(float(logs[name]))
        # Held-out points are rare and worth seeing at once; training points are drawn at most once a second.
        if "eval_loss" in logs or time.time() - self._last_draw >= self.redraw_seconds:
            self._draw()
        self._show_progress()

    def on_train_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        self._draw()
        self._show_progress(finished=True)

    # Drawing -------------------------------------------------------------------------------------
    def draw(self):
        """Return a matplotlib Figure of the losses seen so far (also kept as `self.figure`)."""
        from matplotlib.figure import Figure

        width, height = self.figsize
        panels = 2 if self.metrics else 1
        figure = Figure(figsize=(width * (1.6 if panels == 2 else 1), height), dpi=90)
        ax = figure.add_subplot(1, panels, 1)
        if self.steps:
            ax.plot(self.steps, self.loss, label="training loss", color="tab:blue")
        if self.eval_steps:
            ax.plot(self.eval_steps, self.eval_loss, "o-", label="held-out loss", color="tab:orange")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_xlim(0, max(self.max_steps, self.step, 1))
        # loss near 0 means memorising: keep 0 in view so it shows (a GRPO loss can go below 0: keep that in view too)
        ax.set_ylim(bottom=min([0.0, *(value for value in self.loss if math.isfinite(value))]))
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        if self.steps or self.eval_steps:
            ax.legend(loc="upper right")
        if self.metrics:
            self._draw_metrics(figure.add_subplot(1, 2, 2))
        figure.tight_layout()
        self.figure = figure
        return figure

    def _draw_metrics(self, ax):
        """The method's own numbers (a DPO run's reward margin, say), held-out ones dashed."""
        for name, (steps, values) in self.metric_points.items():
            if steps:
                ax.plot(steps, values, "o--" if name.startswith("eval_") else "-",
                        label=name.replace("eval_", "held-out "))
        ax.set_xlabel("step")
        ax.set_xlim(0, max(self.max_steps, self.step, 1))
        ax.set_title(", ".join(self.metrics))
        ax.grid(alpha=0.3)
        if any(steps for steps, _ in self.metric_points.values()):
            ax.legend(loc="best", fontsize="small")

    def png(self):
        """The current plot as PNG bytes."""
        buffer = io.BytesIO()
        self.draw().savefig(buffer, format="png")
        return buffer.getvalue()

    def _draw(self):
        self._last_draw = time.time()
        if not self._in_ipython:
            return
        from IPython.display import Image

        if not (self.steps or self.eval_steps):
            return
        self._plot_handle.update(Image(data=self.png(), format="png"))

    def _progress(self, finished=False):
        return _Progress(self.step, self.max_steps, time.time() - self.start_time, self.loss, self.eval_loss, finished)

    def _show_progress(self, finished=False):
        now = time.time()
        if self._in_ipython:
            self._progress_handle.update(self._progress(finished))
        elif finished or now - self._last_progress >= 10:  # plain Python: a line every 10 seconds
            print(repr(self._progress(finished)), flush=True)
        self._last_progress = now


class _Text:
    """A plain-text output that can be shown and later replaced through a display handle."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


class _Progress:
    """One progress line: steps done, time spent, time left, latest losses (HTML bar + plain text)."""

    def __init__(self, step, max_steps, seconds, loss, eval_loss, finished=False):
        self.step, self.max_steps, self.seconds, self.finished = step, max_steps, seconds, finished
        self.loss = loss[-1] if loss else None
        self.eval_loss = eval_loss[-1] if eval_loss else None

    def seconds_left(self):
        if self.finished or not self.step or not self.max_steps:
            return None
        return self.seconds / self.step * max(self.max_steps - self.step, 0)

    def __repr__(self):
        parts = [f"step {self.step}/{self.max_steps}", f"{format_duration(self.seconds)} spent"]
        left = self.seconds_left()
        if self.finished:
            parts.append("done")
        elif left is not None:
            parts.append(f"about {format_duration(left)} left")
        if self.loss is not None:
            parts.append(f"training loss {self.loss:.3f}")
        if self.eval_loss is not None:
            parts.append(f"held-out loss {self.eval_loss:.3f}")
        return " · ".join(parts)

    def _repr_html_(self):
        bar = f'<progress value="{self.step}" max="{max(self.max_steps, 1)}" style="width:240px"></progress>'
        return f'<div style="font-family:monospace">{bar} {repr(self)}</div>'


def format_duration(seconds):
    """'0:07', '1:05', '1:02:03' — minutes:seconds, with hours when needed."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _main_metrics(method):
    """What a train method logs beside its loss and is worth watching, e.g. DPO's rewards/margins."""
    if method is None:
        return []
    from ftlib.training.run import plug_in

    return list(plug_in(method).main_metrics)


def _running_in_ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None
