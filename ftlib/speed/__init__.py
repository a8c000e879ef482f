"""GPU options that keep the math: the same loss on the same batch, in less time or memory.

    acceleration.py          what load_model, add_lora and train switch on
    switches.py              every option by name; FTLIB_SPEED_OFF=name,... switches some off, FTLIB_PLAIN=1 all
    fused_lora.py            LoRA projections computed together with their frozen multiply
    nf4_kernel.py            a one-pass Triton kernel that unpacks 4-bit (NF4) weights
    offloaded_checkpoint.py  gradient checkpointing whose saved layer inputs wait in CPU memory
    memory.py                estimate_memory: the peak GPU memory of a run, before anything loads
    memory_budget.py         how many layers train recomputes (and offloads) to fit the GPU's memory
"""
