"""Shared fixtures: a randomly initialised tiny transformers Molmo2 saved to disk."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# gcsfs's hierarchical-namespace probe speaks gRPC, which the GCS emulator does not (it hangs a minute per bucket)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator (gcp-storage-emulator) on 127.0.0.1 with an empty bucket "bucket"; gs:// paths in
    this process (gcsfs, fsspec, etils.epath) and in processes started from it go there. Yields the
    fsspec filesystem."""
    import socket

    pytest.importorskip("gcsfs")
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
    server.start()
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    import fsspec

    yield fsspec.filesystem("gs", token="anon")
    server.stop()
    del os.environ["STORAGE_EMULATOR_HOST"]


def synthetic_config(data_dir, steps, every, **changes):
    """configs/synthetic.py at test sizes (tiny model, 4 frames, 40 training examples); `changes` as
    section__field=value, e.g. stts__method="random"."""
    from stts_jax.train.experiment import load_config_file

    config = load_config_file(os.path.join(ROOT, "configs", "synthetic.py"), "variant=tiny,frames=4")
    config.train.steps, config.train.checkpoint_every, config.train.eval_every = steps, every, 0
    config.data.update(data_dir=data_dir, train_examples=40, eval_examples=8, test_examples=8, llm_seq_len=160)
    for key, value in changes.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(config, torch model, directory): transformers' Molmo2 at the `tiny` sizes with random weights,
    saved with save_pretrained. The text model mixes a scaled (linear) rotary on layers 0 and 2 with
    the unscaled one on layer 1; attention is grouped-query (4 heads, 2 KV heads)."""
    torch = pytest.importorskip("torch")
    from stts_jax.convert.reference import random_hf_molmo2
    from stts_jax.models.variants import get_config

    torch.set_num_threads(2)
    cfg = get_config("tiny")
    text = cfg.text.__class__(
        **{
            **cfg.text.__dict__,
            "rope_scaling": (("factor", 2.0), ("rope_type", "linear")),
            "rope_scaling_layers": (0, 2),
        }
    )
    cfg = cfg.replace(text=text)
    model = random_hf_molmo2(cfg)
    path = str(tmp_path_factory.mktemp("tiny_hf"))
    model.save_pretrained(path)
    return cfg, model, path


def stts_batch(
    cfg,
    rows: list[list[int]],
    frames: int,
    seq: int,
    seed: int = 0,
    llm_seq_len: int | None = None,
    videos_per_row: int = 2,
):
    """A VideoBatch of packed rows for the pruning path: rows[r] lists the frame counts of the videos
    packed in row r (one example each: text, per frame a timestamp, <frame_start>, one placeholder
    per window, <frame_end>, then a question). Frame slots past the row's videos are padding. Its
    layout: `llm_seq_len` tokens after pruning (None: `seq`), up to `videos_per_row` videos per row."""
    import jax.numpy as jnp
    import numpy as np

    from stts_jax.vlm.model import RowLayout, VideoBatch
    from stts_jax.windows import pooling_windows, video_pooling_indices

    rng = np.random.default_rng(seed)
    grid = cfg.vision.patch_grid
    windows = len(pooling_windows(*grid))
    ids = np.zeros((len(rows), seq), np.int32)
    segments = np.zeros_like(ids)
    positions = np.zeros_like(ids)
    frame_video_ids = np.zeros((len(rows), frames), np.int32)
    for r, videos in enumerate(rows):
        tokens, segs, slot = [], [], 0
        for example, length in enumerate(videos, start=1):
            example_ids = list(rng.integers(3, cfg.text.vocab_size, size=3))
            for _ in range(length):
                example_ids += [int(rng.integers(3, cfg.text.vocab_size)), cfg.frame_start_token_id]
                example_ids += [cfg.image_patch_id] * windows + [cfg.frame_end_token_id]
            example_ids += list(rng.integers(3, cfg.text.vocab_size, size=int(rng.integers(3, 7))))
            positions[r, len(tokens) : len(tokens) + len(example_ids)] = np.arange(len(example_ids))
            tokens += example_ids
            segs += [example] * len(example_ids)
            frame_video_ids[r, slot : slot + length] = example
            slot += length
        assert len(tokens) <= seq and slot <= frames
        ids[r, : len(tokens)] = tokens
        segments[r, : len(segs)] = segs
    pooling = video_pooling_indices(frames, *grid)
    return VideoBatch(
        input_ids=jnp.asarray(ids),
        segment_ids=jnp.asarray(segments),
        positions=jnp.asarray(positions),
        pixel_values=jnp.asarray(
            rng.normal(size=(len(rows), frames, grid[0] * grid[1], cfg.vision.patch_dim)), jnp.float32
        ),
        pooling_idx=jnp.broadcast_to(jnp.asarray(pooling), (len(rows), *pooling.shape)),
        frame_video_ids=jnp.asarray(frame_video_ids),
        layout=RowLayout(llm_seq_len, videos_per_row),
    )


def packed_and_dense_vit(cfg, params, out, bias=None):
    """(patch_keep [batch x frames, patches], the pruned model's last ViT block, a dense reference's): the
    reference runs blocks l+2.. over every patch, keys restricted to kept patches of the same frame (their
    scores plus `bias` [batch x frames, patches] where given), from the pruned model's own block l+2 input."""
    import jax.numpy as jnp
    import numpy as np

    from stts_jax.models.vit import VisionTransformer
    from stts_jax.windows import patch_windows, pooling_windows

    keep = np.asarray(out.pruned.keep)
    b, f = keep.shape[:2]
    rows, cols = cfg.vision.patch_grid
    patch_keep = keep[:, :, patch_windows(pooling_windows(rows, cols), rows * cols)].reshape(b * f, -1)
    start = cfg.stts.layer + 2
    dense, _ = VisionTransformer(cfg).apply(
        {"params": params["vit"]},
        out.out[f"vit/block_{start}"],
        start,
        cfg.vit_depth,
        (),
        mask=jnp.asarray(patch_keep)[:, None, None, :],
        bias=None if bias is None else jnp.asarray(bias)[:, None, None, :],
        method=VisionTransformer.run,
    )
    return patch_keep, np.asarray(out.out[f"vit/block_{cfg.vit_depth}"]), np.asarray(dense)
