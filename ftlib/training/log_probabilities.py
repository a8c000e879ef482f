"""Per-token log-probabilities for TRL's fused LM head where its Triton kernel cannot run (a CPU).

TRL 1.15's DPO and KTO trainers score completions through `model(..., fused_lm_head=True)`, which calls a
Triton kernel (trl.kernels.ChunkedLogProbFunction); Triton needs a GPU, so on a CPU the first step fails.
Within `plain_log_probabilities_off_gpu(model)` a plain PyTorch version with the same inputs and outputs
stands in for it: it materialises the logits (fine at CPU sizes) and lets autograd do the backward pass.
On a GPU nothing changes.
"""

from contextlib import contextmanager

import torch

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class PlainLogProbabilities:
    """Same call as TRL's ChunkedLogProbFunction.apply, in plain PyTorch.

    Example: `PlainLogProbabilities.apply(hidden, weight, None, targets, 1.0, 4096)[0]  # log-probabilities`
    """

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None, logit_scale=1.0,
              outputs=OPTIONAL_OUTPUTS):
        logits = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        log_probs_all = torch.log_softmax(logits, dim=-1)
        log_probs = log_probs_all.gather(-1, targets[:, None].long())[:, 0]
        entropy = (-(log_probs_all.exp() * log_probs_all).sum(-1)) if "entropy" in outputs else None
        log_sum_sq = torch.logsumexp(2 * log_probs_all, dim=-1) if "log_sum_sq_probs" in outputs else None
        mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
        is_top1 = (logits.argmax(-1) == targets) if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1


def _triton_device(model):
    return next(model.parameters()).device.type in ("cuda", "xpu")


@contextmanager
def plain_log_probabilities_off_gpu(model):
    """Within the block, TRL's fused LM head uses PlainLogProbabilities unless the model is on a GPU.

    Example: `with plain_log_probabilities_off_gpu(model): trainer.train()`
    """
    from trl.trainer import utils as trl_utils

    kernel = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    swap = not _triton_device(model)
    if swap:
        trl_utils._ChunkedLogProbFunction = PlainLogProbabilities
    try:
        yield swap
    finally:
        if swap:
            trl_utils._ChunkedLogProbFunction = kernel
