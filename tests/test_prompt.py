"""The prompt layout against transformers' Molmo2Processor video string and Molmo2's chat template."""

from __future__ import annotations

import re

import numpy as np
import pytest

from stts_jax.data.prompt import video_prompt
from stts_jax.data.synthetic import SyntheticConfig
from stts_jax.data.tokenizer import synthetic_tokenizer
from stts_jax.models import get_config


def test_prompt_matches_molmo2_processor_layout():
    pytest.importorskip("torch")
    from transformers.models.molmo2.processing_molmo2 import Molmo2Processor

    cfg = get_config("tiny")
    tokenizer = synthetic_tokenizer(SyntheticConfig().vocabulary())
    processor = object.__new__(Molmo2Processor)  # only its prompt-string logic, no tokenizer files needed
    processor.video_use_col_tokens, processor.use_frame_special_tokens = False, True
    times = [0.0, 0.5, 1.0]
    video = processor.get_video_string(np.array([3, 3, 3]), times)
    # The processor prepends the bos string; the chat template puts the video before the user turn.
    text = "<|endoftext|>" + video + "<|im_start|>user\nwhat color is the moving object?<|im_end|>\n"
    text += "<|im_start|>assistant\n"
    special = {
        "<frame_start>": cfg.frame_start_token_id,
        "<frame_end>": cfg.frame_end_token_id,
        "<im_patch>": cfg.image_patch_id,
    }
    expected = []
    for piece in re.split(r"(<frame_start>|<frame_end>|<im_patch>|<\|endoftext\|>|<\|im_start\|>|<\|im_end\|>)", text):
        if piece in special:
            expected.append(special[piece])
        elif piece:
            expected += tokenizer.encode(piece, add_special_tokens=False).ids
    ours = video_prompt(tokenizer, cfg, times, 9, "What color is the moving object?")
    np.testing.assert_array_equal(ours["input_ids"], expected)
    assert ours["targets"].sum() == 0
    answered = video_prompt(tokenizer, cfg, times, 9, "Which?", ["red", "blue"], answer=1)
    assert tokenizer.decode(answered["input_ids"][answered["targets"] == 1].tolist(), skip_special_tokens=False) == (
        "b <|im_end|>"
    )


def test_a_tokenizer_that_cannot_spell_the_answers_is_refused():
    """A word-level vocabulary without the option letters would turn every answer into <unk>."""
    from stts_jax.errors import ConfigError

    cfg = get_config("tiny")
    words = ["what", "is", "it", "red", "green"]
    for vocabulary, answer_format, message in [
        (words, "letter", "cannot encode the answer 'B'"),
        (words + ["a", "b"], "option", "cannot encode the answer 'blue'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            video_prompt(
                synthetic_tokenizer(vocabulary), cfg, [0.0], 4, "what is it", ["red", "blue"], 1, answer_format
            )
    ok = video_prompt(synthetic_tokenizer(words + ["a", "b"]), cfg, [0.0], 4, "what is it", ["red", "blue"], 1)
    assert ok["targets"].sum() == 2  # "b" and <|im_end|>
