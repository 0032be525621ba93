"""Package metadata for stts_jax: STTS token pruning and the Molmo2 video VLM in JAX/Flax."""

from setuptools import find_packages, setup

HF_REQUIRES = [
    "torch==2.13.0",
    # 5.25: video_token_pooling indexes each video's own patches (the model adds the offsets of the videos
    # before it), as convert.reference writes it and convert.hf.batch_from_hf_inputs reads it
    "transformers>=5.25.0",
    "safetensors>=0.6.0",
]

NOTEBOOK_REQUIRES = ["nbformat>=5.10", "nbclient>=0.10", "ipykernel>=6.29", "jupytext>=1.16"]

setup(
    name="stts_jax",
    version="0.1.0",
    description="Spatio-Temporal Token Scoring (STTS) and Molmo2 in JAX/Flax, for TPU pods.",
    packages=find_packages(include=["stts_jax", "stts_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "grain>=0.2.18",
        "ml_collections>=1.1.0",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8.6",  # reads gs://
        "importlib_resources>=6.0",
        "chex>=0.1.90",
        "numpy>=1.26",
        "safetensors>=0.6.0",
        "tokenizers>=0.22",
        "av>=18.0",  # frame rotation from the display matrix; writing it (tests)
        "pillow>=10.0",  # stored frames: JPEG / PNG
        "scikit-image>=0.26",  # the scene set's photographs (skimage.data: bundled in its wheel, CC0 / public domain)
        "scikit-learn>=1.9",  # the scene set's handwritten digits (sklearn.datasets.load_digits, bundled)
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "absl-py>=2.1",
        "etils[epath]>=1.7",
        "tensorboardX>=2.6",  # event files (scalars, images, histograms, hparams) without TensorFlow
        "pyarrow>=14",  # the benchmarks' Parquet annotation files (stts_jax.benchmarks)
    ],
    extras_require={
        "hf": HF_REQUIRES,
        "tpu": ["jax[tpu]>=0.10.2", "gcsfs>=2024.6"],  # pods: libtpu, and gs:// for TFDS / Orbax / TensorBoard
        # jax[tpu]: the libtpu built for the installed jax (0.0.42.* for jax 0.10.2); tests compile for TPU slices
        "test": HF_REQUIRES
        + ["pytest>=8.0", "ruff>=0.14", "hypothesis>=6.100", "jax[tpu]"]
        + ["gcsfs>=2024.6", "gcp-storage-emulator>=2024.8"]  # gs:// paths against a local GCS emulator
        + ["tensorboard>=2.18"]  # an independent reader of the event files
        + NOTEBOOK_REQUIRES,
        "notebooks": NOTEBOOK_REQUIRES,
    },
)
