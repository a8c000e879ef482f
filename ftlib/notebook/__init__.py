"""Notebook helpers: a hyperparameter panel, a live loss plot, the model choice and a memory explorer.

Imported only by notebooks (it needs IPython; the panel needs ipywidgets, the plot matplotlib):

    >>> from ftlib.notebook import HyperparameterPanel, LiveLossPlot, choose_model
"""

from ftlib.notebook.live_plot import LiveLossPlot
from ftlib.notebook.memory_explorer import COMMON_SIZES, MemoryExplorer, memory_table
from ftlib.notebook.method_panel import MethodPanel
from ftlib.notebook.model_choice import CPU_MODEL, GPU_MODEL, MODEL_VARIABLE, TINY_MODEL, ModelChoice, choose_model
from ftlib.notebook.panel import HyperparameterPanel

__all__ = ["COMMON_SIZES", "MemoryExplorer", "memory_table", "CPU_MODEL", "GPU_MODEL", "MODEL_VARIABLE", "TINY_MODEL", "HyperparameterPanel", "LiveLossPlot", "MethodPanel", "ModelChoice", "choose_model"]
