"""A tiny byte-level BPE chat tokenizer, and chat encoding shared with pretrained tokenizers.

``train_tokenizer`` trains a byte-level BPE (``tokenizers`` library, well under a second)
with four special tokens and a jinja chat template::

    <|user|>\\n{prompt}\\n<|assistant|>\\n{response}<|end|>

``format_prompt`` / ``encode_example`` work through ``apply_chat_template`` only, so they
serve any chat tokenizer: the tiny one above and SmolLM2's own (ChatML, eos ``<|im_end|>``).

Note: in transformers 5 ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently
builds a one-token vocabulary, so the tokenizer is built with ``tokenizers`` and wrapped in
``PreTrainedTokenizerFast(tokenizer_object=...)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

USER, ASSISTANT, END, PAD = "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, END, USER, ASSISTANT)  # ids 0, 1, 2, 3

#: the tiny tokenizer's chat template (a system turn, if any, is plain text before the rest)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + '<|end|>' }}"
    "{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n' }}"
    "{% else %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

IGNORE_INDEX = -100


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE chat tokenizer on ``texts``.

    The vocabulary holds the 4 special tokens (``<|pad|>``=0, ``<|end|>``=1, ``<|user|>``=2,
    ``<|assistant|>``=3), all 256 bytes, and merges up to ``vocab_size`` (fewer if the
    corpus runs out of pairs). Any string round-trips through encode/decode. pad is
    ``<|pad|>``; eos is ``<|end|>``; there is no bos (the chat template opens each turn).
    """
    texts = list(texts)
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + specials)")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=PAD,
        eos_token=END,
        additional_special_tokens=[USER, ASSISTANT],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_tokenizer(path) -> PreTrainedTokenizerFast:
    """Reload a tokenizer saved with ``save_pretrained`` (local files only)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def _chat(tok: PreTrainedTokenizerBase, messages: list[dict], gen: bool) -> str:
    if tok.chat_template is None:
        raise ValueError("tokenizer has no chat_template")
    return cast(str, tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False))


def format_prompt(tok: PreTrainedTokenizerBase, prompt: str) -> str:
    """The chat-formatted single user turn, ending with the assistant header."""
    return _chat(tok, [{"role": "user", "content": prompt}], gen=True)


def format_response(tok: PreTrainedTokenizerBase, prompt: str, response: str) -> str:
    """What the template puts after :func:`format_prompt` for ``response``, cut after eos.

    Tiny tokenizer: ``response + "<|end|>"``. SmolLM2: ``response + "<|im_end|>"`` (the
    template's trailing newline after eos is not a target).
    """
    head = format_prompt(tok, prompt)
    full = _chat(
        tok,
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        gen=False,
    )
    if not full.startswith(head):
        raise ValueError("chat template: the conversation does not extend the generation prompt")
    tail = full[len(head) :]
    eos = tok.eos_token
    if eos:
        i = tail.find(eos, len(response) if tail.startswith(response) else 0)
        if i >= 0:
            tail = tail[: i + len(eos)]
    return tail


def encode_prompt(tok: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of :func:`format_prompt` (no extra special tokens: the template has them)."""
    return tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"]


def encode_example(
    tok: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int | None = None
) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` for one chat turn; labels are -100 on the prompt part.

    The prompt (template up to the assistant header) and the response (incl. the end
    token) are tokenized separately, so the prompt ids are exactly what generation starts
    from. If the pair is longer than ``max_len`` the prompt keeps its last tokens (at
    least ``min(len(prompt), max_len // 2)``) and the response is cut on the right.
    """
    p = encode_prompt(tok, prompt)
    r = tok(format_response(tok, prompt, response), add_special_tokens=False)["input_ids"]
    if max_len is not None and len(p) + len(r) > max_len:
        r_keep = min(len(r), max_len - min(len(p), max_len // 2))
        p_keep = min(len(p), max_len - r_keep)
        p = p[len(p) - p_keep :]
        r = r[:r_keep]
    return {"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r}
