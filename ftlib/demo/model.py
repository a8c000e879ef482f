"""The tiny base model's shape: a real Llama architecture, shrunk to about 1.8M parameters.

Same code paths as an 8B Llama (attention with grouped key/value heads, SwiGLU MLP, RMSNorm,
rotary positions), so everything ftlib does to it, it does to a real model.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_config(tokenizer):
    """A LlamaConfig for the demo model, with the special-token ids of `tokenizer`.

    Example:
        >>> tiny_config(tokenizer).hidden_size  # doctest: +SKIP
        192
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=192,  # width: 192 keeps the model ~1.8M parameters, trainable on a CPU in minutes
        num_hidden_layers=4,
        num_attention_heads=6,  # 6 heads of 32 dimensions
        num_key_value_heads=2,  # grouped-query attention, as Llama 3 uses: 3 query heads share a key/value
        intermediate_size=512,  # MLP width, ~2.7 × hidden, as Llama's SwiGLU uses
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,  # one matrix for input and output: halves the parameters of a tiny model
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(tokenizer, seed=0):
    """A randomly initialised tiny Llama for `tokenizer`, in float32, the same for the same seed.

    Example:
        >>> model = build_model(tokenizer)  # doctest: +SKIP
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tokenizer))
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.float()
