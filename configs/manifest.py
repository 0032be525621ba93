"""STTS on any video-QA set written as a JSONL manifest (see README, "Real datasets").

For the training entry point (issue #5), e.g.:
  python -m stts_jax.train --config=configs/manifest.py:variant=molmo2-4b,prune_ratio=0.5 \
      --config.data.train_manifest=/data/nextqa/train.jsonl --config.data.eval_manifest=/data/nextqa/val.jsonl \
      --config.data.tokenizer=/ckpt/Molmo2-4B/tokenizer.json --config.train.init_from=/ckpt/Molmo2-4B \
      --workdir=gs://bucket/runs/nextqa_k05

Arguments: variant, method, prune_ratio, max_frames (per video; 64 in the paper), seed.
"""

import ml_collections

from stts_jax.train.experiment import parse_arg, train_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="molmo2-4b", method="stts", prune_ratio=0.5, max_frames=64, seed=0)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({"variant": a.variant, "dtype": "bfloat16", "param_dtype": "float32"})
    config.stts = ml_collections.ConfigDict(
        {"method": a.method, "prune_ratio": a.prune_ratio, "layer": 3, "max_videos_per_row": 2}
    )
    config.data = ml_collections.ConfigDict(
        {
            "dataset": "manifest_video_qa",
            "data_dir": "/tmp/stts_jax_data",
            "name": "default",  # the TFDS config name the manifests are built under in data_dir
            "train_manifest": "",  # required: --config.data.train_manifest=PATH
            "eval_manifest": "",  # the validation split (train.eval_every > 0 needs it)
            "tokenizer": "",  # required: --config.data.tokenizer=PATH/tokenizer.json (Qwen3's)
            "video_frames": a.max_frames,  # sampled per video (at most 2 fps)
            "batch_size": 64,
            "max_frames": 2 * a.max_frames,  # frame slots per row: about two examples per row
            "llm_seq_len": 9686,  # the paper's sequence length
            "max_videos_per_row": 2,
            "packing_bins": 8,
            "seed": a.seed,
            "strict": False,
        }
    )
    # the paper: 6,250 steps from Molmo2's captioning checkpoint (--config.train.init_from=DIR)
    config.train = train_section(steps=6250, seed=a.seed)
    return config
