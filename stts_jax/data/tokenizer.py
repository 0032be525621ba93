"""Text tokenisation through Hugging Face `tokenizers`: a real `tokenizer.json`, or the synthetic set's own.

Only text goes through the tokenizer; the vision tokens (<frame_start>, placeholders, <frame_end>)
are inserted by id from the model config, so a plain Qwen3 `tokenizer.json` works unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

UNK = "<unk>"
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PUNCTUATION = tuple(".,?:;!'()-/\"")


def synthetic_tokenizer(words: Iterable[str]) -> Tokenizer:
    """A word-level tokenizer over `words`, digits one by one and punctuation; deterministic (the
    vocabulary is sorted), lower-casing, with Qwen's chat tokens as special tokens."""
    vocab = [UNK, *CHAT_TOKENS, *[str(d) for d in range(10)], *PUNCTUATION]
    vocab += sorted({w.lower() for w in words} - set(vocab))
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.add_special_tokens(list(CHAT_TOKENS))
    return tokenizer


def load_tokenizer(path: str) -> Tokenizer:
    """A `tokenizer.json` file (or a directory holding one), e.g. Qwen3's or Molmo2's."""
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file} not found: pass a tokenizer.json file or the directory that holds it.")
    return Tokenizer.from_file(file)


def token_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no {token!r} token; Molmo2 prompts need Qwen's chat tokens {CHAT_TOKENS}.")
    return found
