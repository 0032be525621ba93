"""Molmo2's video prompt: per-frame timestamps and frame markers, the chat template, the answer.

Layout (transformers' Molmo2Processor + chat template): <|endoftext|>, then per frame "t.t " (a
space before every frame but the first), <frame_start>, one placeholder per pooling window,
<frame_end>; then, for a video with subtitles, Molmo2's subtitle text for those frames' times
(`subtitles.subtitle_text`: "subtitle\\n" and the lines near a frame); then
"<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n" and, for training, the answer
followed by <|im_end|>. Text segments are tokenised separately between the special tokens, as the
Hugging Face tokenizer does around special tokens (Molmo2 tokenises its subtitle text on its own too).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from stts_jax.data.subtitles import Subtitle, subtitle_text
from stts_jax.data.tokenizer import token_id
from stts_jax.errors import ConfigError
from stts_jax.models.config import Molmo2Config


def format_question(question: str, options: Sequence[str] | None) -> str:
    """Multiple choice as Molmo2 sees it: the question, lettered options, and the instruction."""
    if not options:
        return question
    lines = [question] + [f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines + ["Answer with the option's letter from the given choices directly."])


ANSWER_FORMATS = ("letter", "option")


def answer_text(answer: int | str, options: Sequence[str] | None, answer_format: str = "letter") -> str:
    """The target answer: the option's letter (Molmo2's multiple-choice format) or the option's own words."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format {answer_format!r}: expected one of {ANSWER_FORMATS}")
    if not options:
        return str(answer)
    return string.ascii_uppercase[answer] if answer_format == "letter" else options[answer]


def encode_answer(tokenizer: Tokenizer, text: str) -> list[int]:
    """The answer's token ids; ConfigError if the tokenizer cannot encode it (it would train and score
    `<unk>`, silently: generation and option scoring then disagree)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    unk = getattr(tokenizer.model, "unk_token", None)
    if unk is not None and tokenizer.token_to_id(unk) in ids:
        raise ConfigError(
            f"the tokenizer cannot encode the answer {text!r} (it becomes {unk}); use a tokenizer whose "
            "vocabulary holds every answer (Qwen3's tokenizer.json encodes any text), or another data.answer_format."
        )
    return ids


def video_prompt(
    tokenizer: Tokenizer,
    cfg: Molmo2Config,
    timestamps: Sequence[float],
    windows_per_frame: int,
    question: str,
    options: Sequence[str] | None = None,
    answer: int | str | None = None,
    answer_format: str = "letter",
    subtitles: Sequence[Subtitle] = (),
) -> dict[str, np.ndarray]:
    """Token ids [L] int32 and target mask [L] (1 on the answer and its closing <|im_end|>); `subtitles` are
    the video's track, shown as Molmo2 shows them for frames at `timestamps`."""
    text = lambda s: tokenizer.encode(s, add_special_tokens=False).ids
    bos, start, end = (token_id(tokenizer, t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    ids = [bos]
    for i, t in enumerate(timestamps):
        ids += text((" " if i else "") + f"{t:.1f} ")
        ids += [cfg.frame_start_token_id] + [cfg.image_patch_id] * windows_per_frame + [cfg.frame_end_token_id]
    ids += text(subtitle_text(subtitles, timestamps))
    ids += [start] + text("user\n" + format_question(question, options)) + [end]
    ids += text("\n") + [start] + text("assistant\n")
    targets = [0] * len(ids)
    if answer is not None:
        answer_ids = encode_answer(tokenizer, answer_text(answer, options, answer_format)) + [end]
        ids += answer_ids
        targets += [1] * len(answer_ids)
    return {"input_ids": np.asarray(ids, np.int32), "targets": np.asarray(targets, np.int32)}
