"""STTS on any video-QA set written as a JSONL manifest (see README, "Data").

For the training entry point (issue #5), e.g.:
  python -m stts_jax.train --config=configs/manifest.py:variant=molmo2-4b,prune_ratio=0.5 \
      --config.data.train_manifest=/data/nextqa/train.jsonl --config.data.eval_manifest=/data/nextqa/val.jsonl \
      --config.data.tokenizer=/ckpt/Molmo2-4B/tokenizer.json --config.train.init_from=/ckpt/Molmo2-4B \
      --workdir=gs://bucket/runs/nextqa_k05

Arguments: variant, method, prune_ratio, max_frames (per video; 64 in the paper), seed.
"""

import ml_collections

from stts_jax.train.experiment import manifest_data_section, parse_arg, train_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="molmo2-4b", method="stts", prune_ratio=0.5, max_frames=64, seed=0)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({"variant": a.variant, "dtype": "bfloat16", "param_dtype": "float32"})
    config.stts = ml_collections.ConfigDict({"method": a.method, "prune_ratio": a.prune_ratio, "layer": 3})
    # rows of about two examples of the paper's sequence length (9,686 tokens), 64 rows per host
    config.data = manifest_data_section(a.max_frames, batch_size=64, videos_per_row=2, llm_seq_len=9686, seed=a.seed)
    # the paper: 6,250 steps from Molmo2's captioning checkpoint (--config.train.init_from=DIR)
    config.train = train_section(steps=6250, seed=a.seed)
    return config
