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


def byte_tokenizer():
    """A byte-level tokenizer (every byte one token, no merges) with Qwen's chat tokens: it spells any text,
    newlines and spaces included, and decodes it back exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from stts_jax.data.tokenizer import CHAT_TOKENS

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(CHAT_TOKENS))
    return tokenizer


def between_frames_and_user_turn(tokenizer, cfg, input_ids) -> str:
    """The text after the last <frame_end> and before the <|im_start|> that opens the user turn."""
    ids = list(input_ids)
    last_frame_end = len(ids) - 1 - ids[::-1].index(cfg.frame_end_token_id)
    user = ids.index(tokenizer.token_to_id("<|im_start|>"), last_frame_end)
    assert tokenizer.decode(ids[user : user + 6], skip_special_tokens=False) == "<|im_start|>user\n"  # a byte a token
    return tokenizer.decode(ids[last_frame_end + 1 : user], skip_special_tokens=False)


def test_subtitles_near_the_sampled_frames_sit_between_the_last_frame_and_the_user_turn():
    """Molmo2's subtitle_mode "frame_1": a subtitle is shown when it overlaps [t - 1, t + 1] s of a frame time t."""
    from stts_jax.data.subtitles import Subtitle

    cfg = get_config("tiny")
    tokenizer = byte_tokenizer()
    times = [2.0, 4.0, 9.0]  # windows [1, 3], [3, 5], [8, 10]
    track = (
        Subtitle(0.0, 0.9, "too early"),  # ends 0.1 s before the first window
        Subtitle(0.5, 1.0, "touches"),  # ends on the first window's edge: shown
        Subtitle(5.1, 6.0, "in the gap"),  # between the windows of 4 s and 9 s
        Subtitle(7.25, 8.04, "near the last"),
        Subtitle(10.01, 12.0, "too late"),
    )
    prompt = video_prompt(tokenizer, cfg, times, 9, "What is said?", subtitles=track)
    text = between_frames_and_user_turn(tokenizer, cfg, prompt["input_ids"])
    assert text == "subtitle\n0.5 - 1.0 touches\n7.2 - 8.0 near the last\n"
    plain = video_prompt(tokenizer, cfg, times, 9, "What is said?")
    assert between_frames_and_user_turn(tokenizer, cfg, plain["input_ids"]) == ""  # no track: no header either
    # the rest of the prompt is unchanged; with frames near none of the lines, the header alone (as Molmo2)
    assert len(prompt["input_ids"]) == len(plain["input_ids"]) + len(text.encode())
    alone = video_prompt(tokenizer, cfg, [3.5], 9, "What is said?", subtitles=track)
    assert between_frames_and_user_turn(tokenizer, cfg, alone["input_ids"]) == "subtitle\n"
