"""Sliders for a training method's own knobs (beta, learning rate, steps) whose values feed `train`.

Like HyperparameterPanel: ipywidgets API shared by 7.7.1 and 8, and nothing waits for a click, so a run top to
bottom reads the starting values.
"""

# name -> (description beside the widget, help text with the range and the trade-off)
SETTINGS = {
    "beta": ("beta", "0.01-0.5: higher keeps the model closer to where it started; lower lets it move further"),
    "learning_rate": ("learning rate", "a real model's DPO: 5e-7 to 5e-6 full, up to 2e-4 with LoRA; continued "
                      "pretraining about 5e-5; the tiny model needs far more"),
    "max_steps": ("max steps", "more steps learn more, and risk over-fitting the training rows"),
    "embedding_learning_rate": ("embedding rate", "about a tenth of the learning rate: embeddings move every "
                                "token's meaning"),
}


class MethodPanel:
    """Sliders for the settings given (any of beta, learning_rate, max_steps, embedding_learning_rate).

    Example:
        >>> panel = MethodPanel(beta=0.1, learning_rate=1e-3, max_steps=60); panel.train_kwargs()["beta"]
        0.1
    """

    def __init__(self, **starting_values):
        unknown = sorted(set(starting_values) - set(SETTINGS))
        if unknown:
            from ftlib.errors import FtlibError

            raise FtlibError(f"MethodPanel got unknown setting(s) {unknown}: use any of {sorted(SETTINGS)}")
        self.defaults = dict(starting_values)
        self._widgets = None

    def values(self):
        """The current values: the widgets' once shown, else the starting values."""
        if self._widgets is None:
            return dict(self.defaults)
        return {name: widget.value for name, widget in self._widgets.items()}

    def train_kwargs(self):
        """Keyword arguments for `train`. Example: `train(model, tokenizer, pairs, method="dpo", **panel.train_kwargs())`."""
        return self.values()

    def describe(self):
        """One line per setting: its value and why it matters."""
        return "\n".join(f"{SETTINGS[name][0]:>15} = {value:<8g} # {SETTINGS[name][1]}"
                         for name, value in self.values().items())

    def show(self):
        """Display the sliders; returns nothing so the cell shows them once."""
        import ipywidgets
        from IPython.display import display

        if self._widgets is None:
            self._widgets = {name: self._slider(name, value) for name, value in self.defaults.items()}
        display(ipywidgets.VBox(list(self._widgets.values())))

    @staticmethod
    def _slider(name, value):
        import ipywidgets

        style, layout = {"description_width": "130px"}, ipywidgets.Layout(width="60%")
        if name == "max_steps":
            return ipywidgets.IntSlider(value=value, min=1, max=max(500, value), description=SETTINGS[name][0],
                                        style=style, layout=layout)
        low, high = (-2, 0) if name == "beta" else (-7, -1)
        return ipywidgets.FloatLogSlider(value=value, base=10, min=low, max=high, step=0.1,
                                         description=SETTINGS[name][0], readout_format=".1e", style=style,
                                         layout=layout)
