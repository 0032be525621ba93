"""Launch stts_jax training on Cloud TPU VM slices (`python -m launch.tpu_vm`) and on GKE through xpk
(`python -m launch.xpk`); run from the repository root. `launch.commands` builds the commands."""
