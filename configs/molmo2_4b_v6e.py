"""Molmo2-4B + STTS fine-tuning at the paper's recipe (STTS.md section 8) on a TPU v6e-16 slice.

Recipe: global batch 64 rows, each packing about two videos of at most 64 frames (128 frame slots),
9686 LLM tokens per row after pruning at k = 0.5 (14870 before), bf16 compute with fp32 params and
AdamW moments, the paper's learning-rate groups, 6,250 steps.

Slice: topology v6e:4x4 (v6e-16: 16 chips with 32 GiB HBM each, 4 hosts of 4 chips), mesh
fsdp=4 x tensor=4, 16 micro-batches (one row per fsdp group at a time).
Why: the logits of one row (9686 tokens x 152k vocabulary, with their fp32 softmax and gradient)
alone exceed a v6e chip's 32 GiB; tensor=4 splits the vocabulary (and heads, MLP) over 4 chips, and
fsdp=4 shards the ~77 GB of fp32 parameters, gradients and AdamW moments 16 ways (~5 GB per chip).
`remat_policy=full` keeps only each block's input for the backward pass.
MEASURED: THIS SLICE DOES NOT FIT YET. The TPU compiler needs 35.76 GiB of temporaries per chip for
the train step against 31.25 GiB usable (BENCHMARKS.md, "TPU ahead of time"); one row per fsdp group
is already the smallest micro-batch. Next to try: v6e:4x8 with tensor=8 (`:hosts=8
--config.train.mesh.tensor=8 --topology=v6e:4x8`), which halves each chip's share of a row.

Check on any host (compiles for the slice; exits 1 if it does not fit):
  python -m stts_jax.aot --config=configs/molmo2_4b_v6e.py --topology=v6e:4x4
Train (every host runs it):
  python -m stts_jax.train --config=configs/molmo2_4b_v6e.py --distributed \
      --config.data.train_manifest=gs://bucket/nextqa/train.jsonl --config.data.tokenizer=/ckpt/tokenizer.json \
      --config.train.init_from=/ckpt/Molmo2-4B --workdir=gs://bucket/runs/nextqa_k05

Arguments (`:frames=256,...`): those of `stts_jax.configs.molmo2_4b_recipe`.
"""

from stts_jax.configs import molmo2_4b_recipe


def get_config(arg: str | None = None):
    return molmo2_4b_recipe(arg, hosts=4, accumulate_steps=16, mesh={"data": 1, "fsdp": 4, "tensor": 4})
