"""The tiny model's tokenizer: byte-level BPE trained on the demo corpus, with a chat template.

Byte-level means every text encodes, whatever its script or emoji: anything the 1,024-entry
vocabulary has no piece for falls back to its bytes, which are all in the vocabulary.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BEGIN = "<|begin|>"  # start of every conversation or pretraining document
END = "<|end|>"  # end of a turn or a document: the EOS token generation stops at
PAD = "<|pad|>"  # padding only, never trained on, so it must differ from EOS
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [BEGIN, END, PAD, *ROLE_TOKENS.values()]

# Each turn is <|role|>, a newline, the text, then <|end|>; no newline follows <|end|>, so a whole
# conversation's text ends exactly with EOS. The {% generation %} markers let transformers return an
# assistant-token mask (apply_chat_template(..., return_assistant_tokens_mask=True)).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('ftlib-tiny knows the roles system, user and assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts, vocab_size=1024):  # 1,024: tiny embeddings; 256 of them are raw bytes
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers.

    Example:
        >>> tokenizer = train_tokenizer(["Shares rose after the news."] * 10, vocab_size=300)
        >>> tokenizer.decode(tokenizer("Shares rose")["input_ids"])
        'Shares rose'
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BEGIN,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        padding_side="right",  # training pads on the right; generate switches to left for batches
    )
    return tokenizer
