"""Molmo2's processor files for a Hugging Face folder, made from a run's tokenizer and video settings, so that
`transformers.AutoProcessor.from_pretrained(folder)` turns a video and a question into the token ids our
pipeline gives the model (stts_jax/data/prompt.py) and the pixels it gives the ViT (stts_jax/data/frames.py).

Files (named and laid out as transformers 5.24's `save_pretrained` writes them):
  tokenizer.json          the run's tokenizer, with Molmo2's image / video tokens at the model config's ids
  tokenizer_config.json   a plain `tokenizers` tokenizer; bos and pad <|endoftext|>, eos <|im_end|>, left padding
  chat_template.jinja     the media first, then the turns in Qwen's chat markup: our prompt layout
  processor_config.json   Molmo2Processor's options, its image and video processors' settings nested inside
  generation_config.json  the bos / eos / pad ids `generate` uses (it stops at <|im_end|>, as our answers end)

Loading the processor needs torchvision (transformers' Molmo2 image and video processors are built on it);
the tokenizer, chat template and generation defaults load without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tokenizers import Tokenizer

from stts_jax.data.frames import MEAN, STD
from stts_jax.data.tokenizer import CHAT_TOKENS
from stts_jax.errors import CheckpointError
from stts_jax.models.config import Molmo2Config

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
PROCESSOR_CONFIG_FILE = "processor_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
PROCESSOR_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE, PROCESSOR_CONFIG_FILE)

BOS, IM_START, IM_END = CHAT_TOKENS  # <|endoftext|> opens every prompt (stts_jax/data/prompt.py)
# Molmo2's tokens after the text vocabulary, in the authors' order (allenai/molmo2 olmo/tokenizer.py
# EXTRA_TOKENS): a tokenizer without them gets them at vocab_size + this index, as the authors' does.
VISION_TOKENS = (
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<|image|>",  # where the processor puts an image (never reaches the model)
    "<im_low>",
    "<frame_start>",
    "<frame_end>",
    "<|video|>",  # where the processor puts a video (never reaches the model)
)
FILLER = "|<EXTRA_TOKENS_{}>|"  # the authors' names for the unused ids between the text vocabulary and those
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR: the resize of stts_jax/data/frames.py

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages if message['content'] is not string -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<|video|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}"
    "{{- raise_exception('Molmo2 conversations alternate user and assistant turns, starting with the user.') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- '<|im_start|>user\\n' + text + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>assistant\\n' + text + ('' if loop.last else '<|im_end|>\\n') -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclasses.dataclass(frozen=True)
class ProcessorSource:
    """What a run's processor files are made from: its text tokenizer and how it samples videos."""

    tokenizer: Tokenizer  # the tokenizer the run's data was read with
    frames: int  # most frames sampled per video
    max_fps: float  # most frames per second sampled


def vision_token_ids(cfg: Molmo2Config) -> dict[str, int]:
    """Each of VISION_TOKENS -> its id: the model config's where it names one, else the authors' slot."""
    named = {
        "<im_start>": cfg.image_start_token_id,
        "<im_end>": cfg.image_end_token_id,
        "<im_patch>": cfg.image_patch_id,
        "<im_col>": cfg.image_col_id,
        "<low_res_im_start>": cfg.low_res_image_start_token_id,
        "<frame_start>": cfg.frame_start_token_id,
        "<frame_end>": cfg.frame_end_token_id,
    }
    ids = {token: named.get(token, cfg.text.vocab_size + i) for i, token in enumerate(VISION_TOKENS)}
    if len(set(ids.values())) != len(ids):
        raise CheckpointError(
            f"the model config's vision token ids {named} collide with the slots of {sorted(set(ids) - set(named))} "
            f"(vocab_size + their index in {VISION_TOKENS}); give the config Molmo2's ids (vocab_size + 0, 1, 2, 3, 4, "
            "7, 8)."
        )
    return ids


def with_vision_tokens(tokenizer: Tokenizer, cfg: Molmo2Config) -> Tokenizer:
    """The tokenizer, with Molmo2's chat tokens checked and its vision tokens at the ids `cfg` reads them at.

    A Molmo2 `tokenizer.json` already has them and comes back unchanged; a Qwen3 one or the synthetic set's
    gets the missing ones as special tokens, the ids between its vocabulary and them filled with unused
    tokens, as the authors pad theirs. A tokenizer that holds them at other ids, or whose vocabulary
    already covers those ids, is refused: the processor would write ids the model reads as other tokens.
    """
    absent = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    if absent:
        raise CheckpointError(
            f"the run's tokenizer has no {absent}: Molmo2 prompts need Qwen's chat tokens {CHAT_TOKENS}. Export a "
            "run trained with a Qwen3 or Molmo2 tokenizer.json."
        )
    wanted = vision_token_ids(cfg)
    present = {t: tokenizer.token_to_id(t) for t in wanted}
    moved = {t: (present[t], i) for t, i in wanted.items() if present[t] is not None and present[t] != i}
    if moved:
        token, (there, here) = next(iter(moved.items()))
        raise CheckpointError(
            f"the run's tokenizer has {token} at id {there}, the model config at {here} ({len(moved)} such tokens); "
            "export with the tokenizer.json of the checkpoint the run started from, or fix the config's token ids."
        )
    missing = sorted((i, t) for t, i in wanted.items() if present[t] is None)
    if not missing:
        return tokenizer
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if missing[0][0] < size:
        raise CheckpointError(
            f"the run's tokenizer has {size} tokens, so {missing[0][1]} cannot take id {missing[0][0]}, where the "
            "model reads it; the model's text.vocab_size must be at least the tokenizer's size (use Molmo2's "
            "tokenizer.json, which holds the vision tokens)."
        )
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's stays as it was
    fillers = 0
    for token_id, token in missing:
        gap = token_id - tokenizer.get_vocab_size(with_added_tokens=True)
        tokenizer.add_special_tokens([FILLER.format(fillers + k) for k in range(gap)] + [token])
        fillers += gap
    placed = {t: tokenizer.token_to_id(t) for _, t in missing}
    if placed != {t: wanted[t] for _, t in missing}:  # a vocabulary with holes numbers added tokens otherwise
        raise CheckpointError(
            f"the run's tokenizer numbered the added vision tokens {placed}, not {wanted}; its vocabulary has gaps. "
            "Use Molmo2's tokenizer.json, which holds the vision tokens."
        )
    return tokenizer


def processor_config(cfg: Molmo2Config, frames: int, max_fps: float) -> dict[str, Any]:
    """processor_config.json: Molmo2Processor's options (Molmo2's), with the image and video processors'
    settings (the model's frame size, patches and windows; the run's frame sampling) nested inside."""
    v = cfg.vision
    pixels = {
        "size": {"height": v.image_size[0], "width": v.image_size[1]},
        "patch_size": v.patch_size,
        "resample": BILINEAR,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [MEAN] * 3,
        "image_std": [STD] * 3,
        "do_convert_rgb": True,
    }
    return {
        "processor_class": "Molmo2Processor",
        "image_use_col_tokens": True,
        "use_single_crop_col_tokens": False,
        "use_single_crop_start_token": True,
        "video_use_col_tokens": False,
        "use_frame_special_tokens": True,
        # Molmo2's image settings; this package trains and evaluates on video only
        "image_processor": {
            "image_processor_type": "Molmo2ImageProcessor",
            **pixels,
            "pooling_size": [2, 2],
            "max_crops": 8,
            "overlap_margins": [4, 4],
        },
        "video_processor": {
            "video_processor_type": "Molmo2VideoProcessor",
            **pixels,
            "pooling_size": list(cfg.adapter.pooling_size),
            "num_frames": frames,
            "max_fps": max_fps,
            "do_sample_frames": True,
        },
    }


def save_processor(cfg: Molmo2Config, source: ProcessorSource, path: str) -> None:
    """Writes the processor files and generation_config.json into the folder `path`."""
    tokenizer = with_vision_tokens(source.tokenizer, cfg)
    tokenizer.save(os.path.join(path, TOKENIZER_FILE))
    tokenizer_config = {
        "tokenizer_class": "TokenizersBackend",
        "backend": "tokenizers",
        "processor_class": "Molmo2Processor",
        "bos_token": BOS,
        "eos_token": IM_END,
        "pad_token": BOS,
        "padding_side": "left",  # batched generation continues every row from its last column
        "model_max_length": cfg.text.max_position_embeddings,
        "image_token": "<|image|>",  # what the processor reads as its image / video placeholders
        "video_token": "<|video|>",
        "extra_special_tokens": [],
    }
    ids = {t: tokenizer.token_to_id(t) for t in CHAT_TOKENS}
    files = {
        TOKENIZER_CONFIG_FILE: tokenizer_config,
        PROCESSOR_CONFIG_FILE: processor_config(cfg, source.frames, source.max_fps),
        GENERATION_CONFIG_FILE: {"bos_token_id": ids[BOS], "eos_token_id": ids[IM_END], "pad_token_id": ids[BOS]},
    }
    for name, content in files.items():
        with open(os.path.join(path, name), "w") as f:
            json.dump(content, f, indent=2)
    with open(os.path.join(path, CHAT_TEMPLATE_FILE), "w") as f:
        f.write(CHAT_TEMPLATE)
