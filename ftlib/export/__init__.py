"""Step 7 of the guide, keeping the fine-tune: `save` writes it, in the form where it will run.

    saving.py  save: a LoRA adapter, or merged weights, into a folder swapped into place only when complete
    merged.py  the adapters folded into de-quantised base weights (for vLLM, transformers, llama.cpp)
    ollama.py  a Modelfile whose template and stop tokens are the tokenizer's
    gguf.py    llama.cpp's converter, for GGUF files (install_converter fetches it from PyPI)
    hub.py     push_to_hub: upload a saved folder
"""

from ftlib.export.hub import push_to_hub
from ftlib.export.saving import SaveResult, save

__all__ = ["SaveResult", "push_to_hub", "save"]
