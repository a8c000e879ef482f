"""A panel of hyperparameter sliders whose current values feed `add_lora` and `train`.

Only ipywidgets API shared by 7.7.1 (Colab) and 8 is used: sliders, a dropdown, boxes and layouts,
read through `.value`. Nothing waits for a click: a notebook run top to bottom ("Run all", nbval)
reads the defaults, and a person who moves a slider and re-runs the next cell gets the new value.
"""

# name -> (default, description shown beside the widget, help text with the range and the trade-off)
DEFAULTS = {
    "learning_rate": (2e-4, "learning rate", "1e-4 to 5e-5 typical for a real model, 2e-4 for LoRA: too high diverges, too low barely moves"),
    "length_by": ("steps", "stop after", "a fixed number of optimizer steps, or whole passes (epochs) over the data"),
    "max_steps": (60, "max steps", "60 is a quick first run; more steps see more data"),
    "num_train_epochs": (1, "epochs", "1-3: more passes fit the data better, too many memorise it"),
    "r": (16, "LoRA rank r", "4-64: more capacity, more memory"),
    "lora_alpha": (16, "LoRA alpha", "at least r: scales the adapter's update (alpha / r)"),
    "lora_dropout": (0.0, "LoRA dropout", "0-0.1: randomly drops adapter inputs against over-fitting"),
    "per_device_train_batch_size": (2, "batch size", "1-8: larger is faster but needs more memory"),
    "gradient_accumulation_steps": (4, "grad. accumulation", "1-16: effective batch = batch size x accumulation"),
    "max_seq_length": (2048, "max seq. length", "longest example in tokens: longer costs memory"),
}

LORA_KEYS = ("r", "lora_alpha", "lora_dropout")
TRAIN_KEYS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps")


class HyperparameterPanel:
    """Sliders for the guide's hyperparameters; `lora_kwargs()` and `train_kwargs()` read them.

    Example:
        >>> panel = HyperparameterPanel(learning_rate=1e-3, max_steps=200); panel.train_kwargs()["max_steps"]
        200
    """

    def __init__(self, **overrides):
        unknown = sorted(set(overrides) - set(DEFAULTS))
        if unknown:
            from ftlib.errors import FtlibError

            raise FtlibError(
                f"HyperparameterPanel got unknown setting(s) {unknown}: use any of {sorted(DEFAULTS)}"
            )
        self.defaults = {name: overrides.get(name, value[0]) for name, value in DEFAULTS.items()}
        self._widgets = None  # built on first display, so the panel works without ipywidgets too

    # Reading values -------------------------------------------------------------------------------
    def values(self):
        """All current values as a dict: the widgets' values once shown, else the defaults."""
        if self._widgets is None:
            return dict(self.defaults)
        return {name: self._read(name, widget) for name, widget in self._widgets.items()}

    def lora_kwargs(self):
        """Keyword arguments for `add_lora`: r, lora_alpha, lora_dropout."""
        values = self.values()
        return {name: values[name] for name in LORA_KEYS}

    def train_kwargs(self):
        """Keyword arguments for `train`: learning rate, batch, accumulation, and steps or epochs."""
        values = self.values()
        kwargs = {name: values[name] for name in TRAIN_KEYS}
        if values["length_by"] == "epochs":
            kwargs.update(num_train_epochs=values["num_train_epochs"], max_steps=None)
        else:
            kwargs.update(max_steps=values["max_steps"], num_train_epochs=None)
        return kwargs

    def load_kwargs(self):
        """Keyword arguments for `load_model`: max_seq_length."""
        return {"max_seq_length": self.values()["max_seq_length"]}

    def describe(self):
        """One line per setting, for printing under the panel: the value and why it matters."""
        values = self.values()
        lines = []
        for name, (_, label, help_text) in DEFAULTS.items():
            lines.append(f"{label:>20} = {_format(values[name]):<8} # {help_text}")
        batch = values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
        lines.append(f"{'effective batch':>20} = {batch:<8} # batch size x accumulation")
        return "\n".join(lines)

    # Widgets -------------------------------------------------------------------------------------
    @property
    def widget(self):
        """The ipywidgets box holding every control (built on first use)."""
        if self._widgets is None:
            self._widgets = self._build()
        import ipywidgets

        controls = list(self._widgets.values())
        half = (len(controls) + 1) // 2
        column = ipywidgets.Layout(width="48%")
        return ipywidgets.HBox(
            [ipywidgets.VBox(controls[:half], layout=column), ipywidgets.VBox(controls[half:], layout=column)]
        )

    def show(self):
        """Display the panel in the notebook; returns nothing so the cell shows it once."""
        from IPython.display import display

        display(self.widget)

    def _build(self):
        import ipywidgets

        style = {"description_width": "130px"}
        layout = ipywidgets.Layout(width="95%")
        values = self.defaults

        def int_slider(name, low, high, step=1):
            return ipywidgets.IntSlider(
                value=values[name], min=low, max=max(high, values[name]), step=step,
                description=DEFAULTS[name][1], style=style, layout=layout,
            )

        learning_rate = ipywidgets.FloatLogSlider(
            value=values["learning_rate"], base=10, min=-6, max=-1, step=0.1,
            description=DEFAULTS["learning_rate"][1], readout_format=".1e", style=style, layout=layout,
        )
        length_by = ipywidgets.Dropdown(
            options=["steps", "epochs"], value=values["length_by"],
            description=DEFAULTS["length_by"][1], style=style, layout=layout,
        )
        dropout = ipywidgets.FloatSlider(
            value=values["lora_dropout"], min=0.0, max=0.5, step=0.05,
            description=DEFAULTS["lora_dropout"][1], readout_format=".2f", style=style, layout=layout,
        )
        sequence = ipywidgets.Dropdown(
            options=sorted({128, 256, 512, 1024, 2048, 4096, 8192, values["max_seq_length"]}),
            value=values["max_seq_length"], description=DEFAULTS["max_seq_length"][1], style=style, layout=layout,
        )
        widgets = {
            "learning_rate": learning_rate,
            "length_by": length_by,
            "max_steps": int_slider("max_steps", 1, 1000),
            "num_train_epochs": int_slider("num_train_epochs", 1, 50),
            "r": int_slider("r", 1, 128),
            "lora_alpha": int_slider("lora_alpha", 1, 256),
            "lora_dropout": dropout,
            "per_device_train_batch_size": int_slider("per_device_train_batch_size", 1, 64),
            "gradient_accumulation_steps": int_slider("gradient_accumulation_steps", 1, 32),
            "max_seq_length": sequence,
        }
        return widgets

    @staticmethod
    def _read(name, widget):
        value = widget.value
        if name == "learning_rate":
            return float(f"{value:.2e}")  # slider steps give 1.9999e-4; keep what the readout shows
        return value

    def _ipython_display_(self):
        self.show()

    def __repr__(self):
        return f"HyperparameterPanel({self.values()})"


def _format(value):
    if isinstance(value, float) and value and (abs(value) < 1e-2):
        return f"{value:.0e}"
    return str(value)
