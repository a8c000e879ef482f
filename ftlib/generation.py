"""Talk to a model: `generate` (one prompt, a conversation, or a batch), `chat`, streaming, `run_chat`.

    >>> generate(model, tokenizer, "Does this headline move the share price?")
    'positive'

A string is wrapped in the tokenizer's chat template (as a single user turn) when it has one, so the
model sees exactly the shape it was fine-tuned on. Greedy decoding (temperature 0) is the default:
the same prompt always gives the same answer, which is what you want when checking a fine-tune.
"""

import copy
import queue
import sys
import threading

import torch

from ftlib.checks import (check_flag, check_positive, check_range, check_tokenizer, describe_weights, is_number,
                          non_finite_weights)
from ftlib.errors import FtlibError
from ftlib.data.templates import end_of_turn_marker

# Roles the chat templates of common models accept.
_ROLES = ("system", "user", "assistant", "tool")


# ----------------------------------------------------------------------------- prompts


def _is_message(item):
    return isinstance(item, dict) and "role" in item and "content" in item


def _is_conversation(item):
    return isinstance(item, (list, tuple)) and len(item) > 0 and all(_is_message(m) for m in item)


def _check_conversation(conversation, where):
    for index, message in enumerate(conversation):
        if message["role"] not in _ROLES:
            raise FtlibError(
                f"{where}: message {index} has role {message['role']!r}; "
                f"use one of {', '.join(_ROLES)} (e.g. {{'role': 'user', 'content': 'Hello'}})"
            )
        if not isinstance(message["content"], str):
            raise FtlibError(
                f"{where}: message {index}'s content must be text, got {type(message['content']).__name__}"
            )
    if conversation[-1]["role"] == "user":
        _check_text(conversation[-1]["content"], f"{where}: the last message ({len(conversation) - 1}, the user's)")


def _check_text(text, where):
    if not text.strip():
        raise FtlibError(
            f"{where} is empty, so there is nothing for the model to answer: pass the question or instruction "
            "as text, e.g. generate(model, tokenizer, 'Does this headline ...?')"
        )


def _split_batch(prompt_or_messages):
    """Return (list of prompts, each a str or a conversation; True when the caller passed one)."""
    value = prompt_or_messages
    if isinstance(value, str):
        _check_text(value, "the prompt")
        return [value], True
    if _is_conversation(value):
        _check_conversation(value, "generate")
        return [list(value)], True
    if isinstance(value, (list, tuple)) and value:
        items = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                _check_text(item, f"prompt {index} of the batch")
                items.append(item)
            elif _is_conversation(item):
                _check_conversation(item, f"generate: conversation {index}")
                items.append(list(item))
            else:
                raise FtlibError(
                    f"generate: batch item {index} is {type(item).__name__}; each item must be a string or "
                    "a list of {'role': ..., 'content': ...} messages"
                )
        return items, False
    raise FtlibError(
        "generate needs a prompt: a string, a list of {'role': ..., 'content': ...} messages, or a list of "
        f"those for a batch; got {type(value).__name__} {value!r:.60}"
    )


def build_prompt(tokenizer, prompt_or_messages, use_chat_template=True):
    """The exact text the model is fed for one prompt or conversation.

    Example:
        >>> build_prompt(tokenizer, "Hi")  # doctest: +SKIP
        '<s><|user|>Hi<|end|><|assistant|>'
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt_or_messages, str):
        if not (use_chat_template and has_template):
            return prompt_or_messages
        messages = [{"role": "user", "content": prompt_or_messages}]
    else:
        messages = prompt_or_messages
        if not has_template:
            raise FtlibError(
                "generate got chat messages but this tokenizer has no chat template: pass a plain string, "
                "or set tokenizer.chat_template (the template the model was fine-tuned with)"
            )
        if not use_chat_template:
            raise FtlibError(
                "use_chat_template=False needs a plain string prompt; messages always go through the chat "
                "template: pass the text, or use_chat_template=True"
            )
    if messages[-1]["role"] == "assistant":
        raise FtlibError(
            "the conversation ends with an assistant message, so there is nothing to answer: "
            "append a {'role': 'user', ...} message"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _encode(tokenizer, texts, device):
    """Tokenize a batch with left padding (new tokens then line up at the right edge)."""
    bos = getattr(tokenizer, "bos_token", None)
    # Chat templates (and format_dataset's `prompt` column) already write BOS as text; adding it
    # again would show the model a start it never saw in training.
    add_special = not any(bos and text.startswith(bos) for text in texts)
    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:  # padding is masked out, so any token will do
            tokenizer.pad_token = tokenizer.eos_token
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
    finally:
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = saved_pad
    return {key: value.to(device) for key, value in encoded.items() if key in ("input_ids", "attention_mask")}


# ----------------------------------------------------------------------------- stopping


def end_of_turn_markers(tokenizer):
    """Text the chat template writes right after an assistant reply (its end-of-turn marker).

    Found by rendering a tiny conversation, so it works for any template. Returns a list of
    stripped, non-empty strings (often one, e.g. ['<|im_end|>']).

    Example:
        >>> end_of_turn_markers(tokenizer)  # doctest: +SKIP
        ['<|end|>']
    """
    if not getattr(tokenizer, "chat_template", None):
        return []
    try:
        marker = end_of_turn_marker(tokenizer, None)  # None: the tokenizer's own template
    except Exception:  # a template that cannot render this shape has no marker we can learn
        return []
    return [marker] if marker else []


def stop_token_ids(model, tokenizer):
    """Token ids that end a reply: EOS, the generation config's EOS list, and the template's end-of-turn."""
    ids = []

    def add(value):
        if value is None:
            return
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, int) and item >= 0 and item not in ids:
                ids.append(item)

    add(getattr(tokenizer, "eos_token_id", None))
    generation_config = getattr(model, "generation_config", None)
    add(getattr(generation_config, "eos_token_id", None))
    for marker in end_of_turn_markers(tokenizer):
        marker_ids = tokenizer.convert_tokens_to_ids([marker])
        if marker_ids and marker_ids[0] != getattr(tokenizer, "unk_token_id", None):
            add(marker_ids[0])
    return ids


def _decode_reply(tokenizer, token_ids, stop_ids):
    """New tokens up to (not including) the first stop token, as text."""
    token_ids = list(token_ids)
    for position, token in enumerate(token_ids):
        if token in stop_ids:
            token_ids = token_ids[:position]
            break
    return tokenizer.decode(token_ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------- settings


def _generation_config(model, tokenizer, max_new_tokens, temperature, top_p, min_p, top_k,
                       repetition_penalty, stop_ids):
    check_positive("max_new_tokens", max_new_tokens, "128 (short answers need ~16, paragraphs 256-512)")
    check_range("temperature", temperature, "0 (greedy) or 0.7-1.0 for variety", low=0)
    check_range("top_p", top_p, "1.0 (off) or 0.9", low=0, high=1, low_open=True)
    check_range("min_p", min_p, "0 (off) or 0.05-0.1", low=0, high=1, high_open=True)
    if not (is_number(top_k) and top_k >= 0 and int(top_k) == top_k):
        raise FtlibError(f"top_k must be a whole number of 0 or more, got {top_k!r}: 0 = off, 40-50 typical")
    check_positive("repetition_penalty", repetition_penalty, "1.0 (off) or 1.1-1.3 against loops", whole=False)
    if temperature == 0:
        chosen = [f"{name}={value!r}" for name, value, off in (("top_p", top_p, 1.0), ("min_p", min_p, 0.0),
                                                               ("top_k", top_k, 0)) if value != off]
        if chosen:
            raise FtlibError(
                f"temperature=0 picks the likeliest token every time, so {', '.join(chosen)} (for sampling) would "
                f"be ignored: set temperature=0.7 (or another value above 0) to sample, or leave "
                f"{', '.join(item.split('=')[0] for item in chosen)} out for greedy answers"
            )

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else None
    if config is None:
        from transformers import GenerationConfig

        config = GenerationConfig()
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.eos_token_id = stop_ids or None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else None)
    config.pad_token_id = pad
    config.repetition_penalty = repetition_penalty
    config.use_cache = True
    if temperature == 0:
        # Greedy: clear sampling knobs a model's own config may carry (e.g. temperature 0.6) so they
        # don't trigger warnings or leak in.
        config.do_sample = False
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.min_p = None
    else:
        config.do_sample = True
        config.temperature = float(temperature)
        config.top_p = float(top_p)
        config.top_k = int(top_k)  # 0 = off, so only top_p / min_p shape the choice
        config.min_p = float(min_p) if min_p else None
    return config


def _model_device(model):
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def prepare_for_inference(model):
    """Eval mode (no dropout) with the key/value cache on; `train` switches back to training mode.

    Example:
        >>> prepare_for_inference(model)  # doctest: +SKIP
    """
    model.eval()
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = True  # training with gradient checkpointing turns it off
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.use_cache = True
    return model


# ----------------------------------------------------------------------------- streaming


class _QueueStreamer:
    """Receives new token ids from `model.generate` and passes them to a queue, one step at a time."""

    def __init__(self):
        self.queue = queue.Queue()
        self.skip_prompt = True

    def put(self, value):
        if self.skip_prompt:  # the first call carries the prompt
            self.skip_prompt = False
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self):
        self.queue.put(None)


class _StopWhenAsked:
    """A stopping criterion that ends generation once the reader has gone (loop left, Ctrl-C)."""

    def __init__(self, event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _NonFiniteOutput(Exception):
    """Raised inside model.generate when the first scores already hold a NaN or +inf."""


def _scores_watch():
    """A logits processor noting NaN or +inf scores (-inf is how sampling masks tokens out, so it is allowed).

    The first step is checked at once (one synchronisation), so a model with broken weights fails before it
    writes anything; later steps are only accumulated on the device and read once, after generation.
    """
    from transformers import LogitsProcessor

    class ScoresWatch(LogitsProcessor):
        def __init__(self):
            self.seen = None

        def __call__(self, input_ids, scores):
            bad = torch.isnan(scores).any() | torch.isposinf(scores).any()
            if self.seen is None and bool(bad):
                raise _NonFiniteOutput()
            self.seen = bad if self.seen is None else self.seen | bad
            return scores

        def found(self):
            return self.seen is not None and bool(self.seen)

    return ScoresWatch()


def _check_weights(model, where):
    """FtlibError for a model with NaN or infinite weights: its replies would be nonsense, often empty."""
    if not isinstance(model, torch.nn.Module):
        raise FtlibError(f"{where} needs the model that load_model returned, got {type(model).__name__}: "
                         f"{where}(model, tokenizer, 'Hello')")
    if non_finite_weights(model, remember=True):
        raise non_finite_output_error(model, where)


def non_finite_output_error(model, where="generate"):
    """The FtlibError for a model whose outputs came out NaN or infinite: names the broken weights, or the overflow.

    Example:
        >>> raise non_finite_output_error(model, "evaluate")  # doctest: +SKIP
    """
    broken = non_finite_weights(model)
    if broken:
        return FtlibError(
            f"{where}: the model's weights hold NaN or infinite values, in {describe_weights(broken)}, so its replies "
            "would be nonsense (often empty): load the model again (or its last good save) with load_model; if "
            "training made them, train again with a lower learning_rate"
        )
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return FtlibError(
        f"{where}: the model's outputs came out NaN or infinite although its weights are finite, so the numbers "
        f"overflowed its {dtype} precision: load it with load_model(..., dtype='float32'), or dtype='bfloat16' "
        "on a GPU that has it"
    )


def _stream_pieces(model, tokenizer, inputs, config, stop_ids):
    """Yield text pieces as they are generated. Joined, they equal the non-streaming reply exactly."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    streamer = _QueueStreamer()
    reader_gone = threading.Event()
    failure = []
    watch = _scores_watch()

    def work():
        try:
            with torch.inference_mode():
                model.generate(**inputs, generation_config=config, streamer=streamer,
                               logits_processor=LogitsProcessorList([watch]),
                               stopping_criteria=StoppingCriteriaList([_StopWhenAsked(reader_gone)]))
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    token_ids, shown = [], ""
    try:
        while True:
            step = streamer.queue.get()
            if step is None:
                break
            token_ids.extend(step)
            text = _decode_reply(tokenizer, token_ids, stop_ids)
            # Hold back while the text ends inside a multi-byte character (shown as U+FFFD) or when
            # the decoded text changed earlier than what was shown (possible with merges).
            if text.startswith(shown) and not text.endswith("\ufffd") and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
            if any(token in stop_ids for token in step):
                reader_gone.set()  # the reply is complete; don't wait for other stopping rules
    finally:
        reader_gone.set()  # also when the caller stopped reading early or pressed Ctrl-C
        thread.join()
    if (failure and isinstance(failure[0], _NonFiniteOutput)) or (not failure and watch.found()):
        raise non_finite_output_error(model) from (failure[0] if failure else None)
    if failure:
        raise failure[0]
    text = _decode_reply(tokenizer, token_ids, stop_ids)
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown):]


# ----------------------------------------------------------------------------- public API


def _check_call_options(use_chat_template, seed, print_tokens):
    check_flag("use_chat_template", use_chat_template)
    check_flag("print_tokens", print_tokens)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise FtlibError(f"seed must be a whole number or None, got {seed!r}: try seed=0 for repeatable sampling")


def generate(
    model,
    tokenizer,
    prompt_or_messages,
    *,
    max_new_tokens=128,  # 16 for a label, 256-512 for paragraphs: the cap on the reply's length
    temperature=0.0,  # 0 = greedy (same answer every time); 0.7-1.0 varied; >1.2 often incoherent
    top_p=1.0,  # 1.0 = off; 0.9 keeps the smallest set of tokens holding 90% of the probability (sampling only)
    min_p=0.0,  # 0 = off; 0.05-0.1 drops tokens under that share of the top token's probability (sampling only)
    top_k=0,  # 0 = off; 40-50 keeps only the k likeliest tokens (sampling only)
    repetition_penalty=1.0,  # 1.0 = off; 1.1-1.3 discourages loops in long replies
    use_chat_template=True,  # False feeds a string exactly as given (e.g. format_dataset's `prompt`)
    seed=None,  # a whole number makes sampling repeatable
    print_tokens=False,  # True also prints the reply as it is written (one prompt only); `stream` yields the pieces
):
    """Write the model's reply to a prompt, a conversation, or a batch of either.

    A string or a list of {"role", "content"} messages returns the reply (str); a list of strings or
    of conversations returns a list of replies, generated together with left padding. Stops at EOS
    (or the chat template's end-of-turn marker). Puts the model in eval mode with the cache on.
    With print_tokens=True the reply is also printed piece by piece as the model writes it.

    Example:
        >>> generate(model, tokenizer, "Headline: Acme shares jump. Positive or negative?")  # doctest: +SKIP
        'positive'
    """
    prompts, single = _split_batch(prompt_or_messages)
    _check_call_options(use_chat_template, seed, print_tokens)
    check_tokenizer(tokenizer, "generate")
    if print_tokens and not single:
        raise FtlibError(
            f"print_tokens=True prints one reply as it is written, but got a batch of {len(prompts)} prompts: "
            "pass one prompt, or leave print_tokens out for the batch"
        )
    texts = [build_prompt(tokenizer, prompt, use_chat_template) for prompt in prompts]
    _check_weights(model, "generate")
    prepare_for_inference(model)
    stop_ids = stop_token_ids(model, tokenizer)
    config = _generation_config(model, tokenizer, max_new_tokens, temperature, top_p, min_p, top_k,
                                repetition_penalty, stop_ids)
    inputs = _encode(tokenizer, texts, _model_device(model))
    if seed is not None:
        torch.manual_seed(seed)

    if print_tokens:
        output = sys.stdout  # looked up now, so notebooks and captured output see the text
        pieces = []
        for piece in _stream_pieces(model, tokenizer, inputs, config, stop_ids):
            pieces.append(piece)
            output.write(piece)
            output.flush()
        output.write("\n")
        output.flush()
        return "".join(pieces)

    from transformers import LogitsProcessorList

    watch = _scores_watch()
    try:
        with torch.inference_mode():
            generated = model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([watch]))
    except _NonFiniteOutput as error:
        raise non_finite_output_error(model) from error
    if watch.found():
        raise non_finite_output_error(model)
    new_tokens = generated[:, inputs["input_ids"].shape[1]:].tolist()
    replies = [_decode_reply(tokenizer, row, stop_ids) for row in new_tokens]
    return replies[0] if single else replies


def stream(
    model,
    tokenizer,
    prompt_or_messages,
    *,
    max_new_tokens=128,  # the cap on the reply's length, as in generate
    temperature=0.0,  # 0 = greedy; 0.7-1.0 varied
    top_p=1.0,  # 1.0 = off (sampling only)
    min_p=0.0,  # 0 = off (sampling only)
    top_k=0,  # 0 = off (sampling only)
    repetition_penalty=1.0,  # 1.0 = off
    use_chat_template=True,  # False feeds a string exactly as given
    seed=None,  # a whole number makes sampling repeatable
):
    """Yield the reply piece by piece as the model writes it (for your own display loop).

    Takes the same options as `generate`; joined, the pieces equal `generate`'s reply.

    Example:
        >>> for piece in stream(model, tokenizer, "Tell me a story"):  # doctest: +SKIP
        ...     print(piece, end="", flush=True)
    """
    prompts, single = _split_batch(prompt_or_messages)
    _check_call_options(use_chat_template, seed, False)
    check_tokenizer(tokenizer, "stream")
    if not single:
        raise FtlibError("stream takes one prompt or one conversation; use generate for a batch")
    text = build_prompt(tokenizer, prompts[0], use_chat_template)
    _check_weights(model, "stream")
    prepare_for_inference(model)
    stop_ids = stop_token_ids(model, tokenizer)
    config = _generation_config(model, tokenizer, max_new_tokens, temperature, top_p, min_p, top_k,
                                repetition_penalty, stop_ids)
    inputs = _encode(tokenizer, [text], _model_device(model))
    if seed is not None:
        torch.manual_seed(seed)
    yield from _stream_pieces(model, tokenizer, inputs, config, stop_ids)


def chat(model, tokenizer, message, history=None, *, system_prompt=None, **generate_options):
    """One turn of a multi-turn conversation: add `message`, generate the reply, remember both.

    `history` is a list of {"role", "content"} messages that this call extends in place (only when
    the reply succeeded), so the next call sees the whole conversation. `system_prompt` starts a
    conversation that has no system message; `generate_options` are generate's (max_new_tokens, ...).

    Example:
        >>> history = []
        >>> chat(model, tokenizer, "Hello!", history, system_prompt="Answer briefly.")  # doctest: +SKIP
        'Hi! How can I help?'
        >>> chat(model, tokenizer, "What did I just say?", history)  # doctest: +SKIP
    """
    if not isinstance(message, str) or not message.strip():
        raise FtlibError(f"chat needs a non-empty message string, got {message!r}: pass what you want to say, "
                         "e.g. chat(model, tokenizer, 'Hello!', history)")
    if history is None:
        history = []
    if not isinstance(history, list):
        raise FtlibError(f"history must be a list of messages (start with []), got {type(history).__name__}")
    conversation = list(history)
    if system_prompt:
        existing = [m.get("content") for m in conversation if isinstance(m, dict) and m.get("role") == "system"]
        if not existing:
            conversation.insert(0, {"role": "system", "content": system_prompt})
        elif system_prompt not in existing:
            raise FtlibError(
                f"system_prompt={system_prompt!r} differs from the system message this history already starts "
                f"with ({existing[0]!r}): leave system_prompt out to keep the conversation's own, or start a new "
                "history ([]) for the new system prompt"
            )
    conversation.append({"role": "user", "content": message})
    reply = generate(model, tokenizer, conversation, **generate_options)
    history[:] = conversation + [{"role": "assistant", "content": reply}]
    return reply


def run_chat(
    path_or_model,
    tokenizer=None,  # needed with a model object; a folder or Hub id brings its own
    *,
    max_new_tokens=256,  # the cap on each reply
    temperature=0.0,  # 0 = greedy; 0.7 for livelier answers
    top_p=1.0,  # 1.0 = off; 0.9 with temperature above 0
    min_p=0.0,  # 0 = off; 0.05-0.1 with temperature above 0
    system_prompt=None,  # an optional system message that starts the conversation
    load_in_4bit=None,  # folder or Hub id: None = 4-bit on a GPU (a merged save unquantised), full precision on a CPU
):
    """An interactive terminal chat with a saved adapter or merged model; replies stream as written.

    Reads what you type with `input()` and prints to standard output. Commands: /reset starts over,
    /exit (or Ctrl-D) leaves. Returns the conversation.

    Example:
        >>> run_chat("my-adapter")  # doctest: +SKIP
    """
    if isinstance(path_or_model, (str, bytes)) or hasattr(path_or_model, "__fspath__"):
        if tokenizer is not None:
            raise FtlibError(
                "run_chat(folder) loads the tokenizer saved with the model, so the tokenizer passed would be "
                "ignored: run_chat(folder) alone, or run_chat(model, tokenizer) for a model already loaded"
            )
        from ftlib.models import load_model

        if load_in_4bit is None and not torch.cuda.is_available():
            load_in_4bit = False  # on a GPU, None leaves the choice to load_model
        model, tokenizer = load_model(str(path_or_model), load_in_4bit=load_in_4bit)
    else:
        model = path_or_model
        if tokenizer is None:
            raise FtlibError("run_chat(model) needs its tokenizer too: run_chat(model, tokenizer)")
        if load_in_4bit is not None:
            raise FtlibError(
                "load_in_4bit chooses how run_chat loads a folder, but this model is already loaded: leave "
                "load_in_4bit out, or pass the folder, e.g. run_chat('my-adapter', load_in_4bit=True)"
            )
    history = []
    print("Chat with the model. /reset starts over, /exit leaves.", flush=True)
    while True:
        try:
            message = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            break
        message = message.strip()
        if not message:
            continue
        if message in ("/exit", "/quit"):
            break
        if message == "/reset":
            history.clear()
            print("(conversation cleared)")
            continue
        print("model> ", end="", flush=True)
        chat(model, tokenizer, message, history, system_prompt=system_prompt, max_new_tokens=max_new_tokens,
             temperature=temperature, top_p=top_p, min_p=min_p, print_tokens=True)
    sys.stdout.flush()
    return history
