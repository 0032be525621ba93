"""Parity check of our Molmo2 against transformers' on the same weights and a synthetic video prompt.

  python -m stts_jax.convert.check                      # a random `tiny` model built on the spot
  python -m stts_jax.convert.check --hf_dir=DIR          # a saved checkpoint, e.g. allenai/Molmo2-4B

Prints max |logit difference|, whether greedy generation with the KV cache returns the same tokens
as transformers' `generate`, and the time of each forward on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from stts_jax.convert.hf import batch_from_hf_inputs, hf_video_logits, load_molmo2
from stts_jax.convert.reference import random_hf_molmo2, torch_inputs, video_prompt
from stts_jax.models.variants import get_config
from stts_jax.vlm.generate import greedy_generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.convert.check", description=__doc__.splitlines()[0])
    parser.add_argument("--hf_dir", default=None, help="Molmo2 directory (save_pretrained); default: random tiny")
    parser.add_argument("--frames", type=int, nargs="+", default=[3, 2], help="frames of the video in each row")
    parser.add_argument("--new_tokens", type=int, default=8)
    args = parser.parse_args(argv)

    import torch
    import transformers

    path = args.hf_dir
    if path is None:
        path = tempfile.mkdtemp(prefix="molmo2_tiny_")
        random_hf_molmo2(get_config("tiny")).save_pretrained(path)
    reference = transformers.Molmo2ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    cfg, params = load_molmo2(path)
    inputs = video_prompt(cfg, args.frames)
    valid = inputs["attention_mask"] == 1

    start = time.perf_counter()
    with torch.no_grad():
        theirs = reference(**torch_inputs(inputs)).logits.numpy()
    torch_seconds = time.perf_counter() - start
    hf_video_logits(cfg, params, inputs)  # compile
    start = time.perf_counter()
    ours = hf_video_logits(cfg, params, inputs)
    jax_seconds = time.perf_counter() - start

    with torch.no_grad():
        expected = reference.generate(
            **torch_inputs(inputs), max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )[:, inputs["input_ids"].shape[1] :].numpy()
    generated = np.asarray(greedy_generate(cfg, params, batch_from_hf_inputs(cfg, inputs), args.new_tokens))

    diff = float(np.abs(ours - theirs)[valid].max())
    rows = [
        ("checkpoint", path),
        ("prompt", f"{len(args.frames)} rows, frames {args.frames}, {inputs['input_ids'].shape[1]} tokens"),
        ("max |logit|", f"{float(np.abs(theirs)[valid].max()):.4g}"),
        ("max |logit difference|", f"{diff:.3g}"),
        ("greedy tokens equal", str(bool((generated == expected).all()))),
        ("forward seconds torch / jax", f"{torch_seconds:.3f} / {jax_seconds:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if diff < 1e-4 and (generated == expected).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
