"""Molmo2-4B + STTS fine-tuning at the paper's recipe (STTS.md section 8) on a TPU v6e-16 slice.

Recipe: global batch 64 rows, each packing about two videos of at most 64 frames (128 frame slots),
9686 LLM tokens per row after pruning at k = 0.5 (14870 before), bf16 compute with fp32 params and
AdamW moments, the paper's learning-rate groups, 6,250 steps.

Slice: topology v6e:4x4 (v6e-16: 16 chips with 32 GiB HBM each, 4 hosts of 4 chips), mesh
fsdp=4 x tensor=4, 16 micro-batches (one row per fsdp group at a time).
Why: the logits of one row (9686 tokens x 152k vocabulary, with their fp32 softmax and gradient)
alone exceed a v6e chip's 32 GiB; tensor=4 splits the vocabulary (and heads, MLP) over 4 chips, and
fsdp=4 shards the ~77 GB of fp32 parameters, gradients and AdamW moments 16 ways (~5 GB per chip).
`remat_policy=full` keeps only each block's input for the backward pass (measured figures:
notes_aot_table.md).

Check on any host (compiles for the slice; exits 1 if it does not fit):
  python -m stts_jax.aot --config=configs/molmo2_4b_v6e.py --topology=v6e:4x4
Train (every host runs it):
  python -m stts_jax.train --config=configs/molmo2_4b_v6e.py --distributed \
      --config.data.train_manifest=gs://bucket/nextqa/train.jsonl --config.data.tokenizer=/ckpt/tokenizer.json \
      --config.train.init_from=/ckpt/Molmo2-4B --workdir=gs://bucket/runs/nextqa_k05

Arguments: method, prune_ratio, frames (per video), videos_per_row, batch (global rows), seq (LLM
tokens per row after pruning), hosts (of the slice: data.batch_size is per host), seed.
"""

import ml_collections

from stts_jax.configs import parse_arg, train_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, method="stts", prune_ratio=0.5, frames=64, videos_per_row=2, batch=64, seq=9686, hosts=4, seed=0)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(
        {
            "variant": "molmo2-4b",
            "dtype": "bfloat16",
            "param_dtype": "float32",
            "attention_impl": "splash",
            "scan_layers": True,
            "remat_policy": "full",
        }
    )
    config.stts = ml_collections.ConfigDict(
        {"method": a.method, "prune_ratio": a.prune_ratio, "layer": 3, "max_videos_per_row": a.videos_per_row}
    )
    config.data = ml_collections.ConfigDict(
        {
            "dataset": "manifest_video_qa",
            "data_dir": "/tmp/stts_jax_data",
            "name": "default",
            "train_manifest": "",  # required: --config.data.train_manifest=PATH
            "eval_manifest": "",
            "tokenizer": "",  # required: --config.data.tokenizer=PATH/tokenizer.json (Qwen3's)
            "video_frames": a.frames,
            "batch_size": a.batch // a.hosts,  # rows per host
            "max_frames": a.videos_per_row * a.frames,
            "llm_seq_len": a.seq,
            "max_videos_per_row": a.videos_per_row,
            "packing_bins": 8,
            "seed": a.seed,
            "strict": False,
        }
    )
    config.train = train_section(steps=6250, seed=a.seed, accumulate_steps=16, mesh={"data": 1, "fsdp": 4, "tensor": 4})
    return config
