"""Pick a model size, a method and a sequence length; see the memory estimate against your GPU.

Built from ipywidgets that exist in both 7.7.1 (Colab) and 8: dropdowns, an Output area and `observe`
on "value". The first estimate is printed when the explorer is created, so a saved notebook shows it.
"""

from ftlib.speed.memory import estimate_memory

# Representative open models of each size (their published config numbers live in ftlib.speed.memory).
COMMON_SIZES = {
    "1B": "llama-3.2-1b",
    "3B": "llama-3.2-3b",
    "8B": "llama-3.1-8b",
    # Qwen2.5-14B's published config.json numbers: no Llama of this size exists.
    "14B": dict(name="qwen2.5-14b", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "70B": "llama-3.1-70b",
}
METHOD_NAMES = {"QLoRA (4-bit base)": "qlora", "LoRA (16-bit base)": "lora", "8-bit LoRA": "lora_8bit",
                "full fine-tune": "full"}


def estimate_for_size(size, method="qlora", *, max_seq_length=2048, per_device_train_batch_size=2):
    """`estimate_memory` for one of COMMON_SIZES ("1B", "3B", "8B", "14B", "70B").

    Example:
        >>> estimate_for_size("8B", "qlora").fits(16)
        True
    """
    return estimate_memory(COMMON_SIZES[size], method, max_seq_length=max_seq_length,
                           per_device_train_batch_size=per_device_train_batch_size)


def memory_table(methods=("qlora", "lora_8bit", "lora", "full"), *, max_seq_length=2048, per_device_train_batch_size=2,
                 gpu_gb=16):
    """A text table: estimated GB for every common size and method; '*' marks what fits `gpu_gb`.

    Example:
        >>> print(memory_table(gpu_gb=16))
    """
    lines = [f"GB needed at sequence length {max_seq_length}, batch {per_device_train_batch_size}; "
             f"* fits a {gpu_gb} GB GPU",
             f"{'size':<6}" + "".join(f"{method:>12}" for method in methods)]
    for size in COMMON_SIZES:
        cells = []
        for method in methods:
            estimate = estimate_for_size(size, method, max_seq_length=max_seq_length,
                                         per_device_train_batch_size=per_device_train_batch_size)
            cells.append(f"{estimate.total_gb:>10.1f}{'*' if estimate.fits(gpu_gb) else ' ':<2}")
        lines.append(f"{size:<6}" + "".join(cells))
    return "\n".join(lines)


class MemoryExplorer:
    """Dropdowns for size, method, sequence length and batch; the estimate updates as they change.

    Example:
        >>> MemoryExplorer(gpu_gb=16)   # in a notebook cell
    """

    def __init__(self, gpu_gb=16, *, size="8B", method="qlora", max_seq_length=2048, per_device_train_batch_size=2):
        import ipywidgets

        self.gpu_gb = gpu_gb
        style = {"description_width": "110px"}
        self.size = ipywidgets.Dropdown(options=list(COMMON_SIZES), value=size, description="model size", style=style)
        self.method = ipywidgets.Dropdown(options=list(METHOD_NAMES.items()), value=method, description="method",
                                          style=style)
        self.length = ipywidgets.Dropdown(options=[512, 1024, 2048, 4096, 8192], value=max_seq_length,
                                          description="sequence length", style=style)
        self.batch = ipywidgets.Dropdown(options=[1, 2, 4, 8], value=per_device_train_batch_size,
                                         description="batch size", style=style)
        self.output = ipywidgets.Output()
        for control in (self.size, self.method, self.length, self.batch):
            control.observe(self._update, names="value")
        self.widget = ipywidgets.VBox([ipywidgets.HBox([self.size, self.method]),
                                       ipywidgets.HBox([self.length, self.batch]), self.output])

    def estimate(self):
        """The estimate for the current choices."""
        return estimate_for_size(self.size.value, self.method.value, max_seq_length=self.length.value,
                                 per_device_train_batch_size=self.batch.value)

    def text(self):
        estimate = self.estimate()
        verdict = "fits" if estimate.fits(self.gpu_gb) else "does NOT fit"
        return f"{estimate}\n-> {verdict} a {self.gpu_gb} GB GPU"

    def _update(self, change=None):
        self.output.clear_output(wait=True)
        with self.output:
            print(self.text())

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
        # Printed outside the Output widget too, so a saved or headless notebook shows the first estimate.
        print(self.text())
