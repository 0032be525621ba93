"""Molmo2-4B + STTS fine-tuning at the paper's recipe (STTS.md section 8) on a TPU v5p-16 slice.

Recipe: global batch 64 rows, each packing about two videos of at most 64 frames (128 frame slots),
9686 LLM tokens per row after pruning at k = 0.5 (14870 before), bf16 compute with fp32 params and
AdamW moments, the paper's learning-rate groups, 6,250 steps.

Slice: topology v5p:2x2x2 (v5p-16: 8 chips with 95 GiB HBM each, 2 hosts of 4 chips), mesh fsdp=8.
Why: parameters, gradients and the two AdamW moments of the ~4.8 B parameters take ~77 GB in fp32;
fully sharded (fsdp=8) that is ~10 GB per chip, and fsdp needs no tensor-parallel collectives inside
the attention kernels. The activations dominate: 8 rows per chip of 14,870 LLM tokens and 93,312
ViT patches each; `remat_policy=full` keeps only each block's input for the backward pass, and four
micro-batches (`accumulate_steps=4`, 2 rows per chip at a time) keep the step inside HBM with a
margin; two micro-batches do not fit (measured figures: BENCHMARKS.md, "TPU ahead of time").

Check on any host (compiles for the slice; exits 1 if it does not fit):
  python -m stts_jax.aot --config=configs/molmo2_4b_v5p.py --topology=v5p:2x2x2
  python -m stts_jax.aot --config=configs/molmo2_4b_v5p.py:frames=256,videos_per_row=1,batch=8,seq=14939 \
      --topology=v5p:2x2x2
Train (every host runs it):
  python -m stts_jax.train --config=configs/molmo2_4b_v5p.py --distributed \
      --config.data.train_manifest=gs://bucket/nextqa/train.jsonl --config.data.tokenizer=/ckpt/tokenizer.json \
      --config.train.init_from=/ckpt/Molmo2-4B --workdir=gs://bucket/runs/nextqa_k05

Arguments (`:frames=256,...`): those of `stts_jax.train.experiment.molmo2_4b_recipe`.
"""

from stts_jax.train.experiment import molmo2_4b_recipe


def get_config(arg: str | None = None):
    return molmo2_4b_recipe(arg, hosts=2, accumulate_steps=4, mesh={"data": 1, "fsdp": 8, "tensor": 1})
