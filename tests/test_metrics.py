"""What a run logs: the evaluation pictures, the event file's images / histograms / hparams, MFU, model FLOPs."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from stts_jax.accelerators import ACCELERATORS, mfu
from stts_jax.data.frames import patchify, unpatchify
from stts_jax.models import get_config
from stts_jax.pictures import PRUNED_BRIGHTNESS, kept_windows_picture
from stts_jax.windows import frame_windows


def test_unpatchify_inverts_patchify():
    frames = np.random.default_rng(0).integers(0, 256, (3, 28, 42, 3), dtype=np.uint8)
    np.testing.assert_array_equal(unpatchify(patchify(frames, 14), (2, 3), 14), frames)


def test_the_picture_dims_exactly_the_pruned_windows():
    cfg = get_config("tiny")
    v = cfg.vision
    rng = np.random.default_rng(1)
    frames = rng.integers(100, 256, (2, *v.image_size, 3), dtype=np.uint8)
    windows = frame_windows(cfg)
    keep = rng.random((2, len(windows))) < 0.5
    scores = rng.random((2, len(windows)))
    picture = kept_windows_picture(patchify(frames, v.patch_size), keep, scores, cfg)
    height, width = v.image_size
    assert picture.shape == (2 * height, 2 * width, 3) and picture.dtype == np.uint8
    top = picture[:height].reshape(height, 2, width, 3).transpose(1, 0, 2, 3)
    rows, cols = v.patch_grid
    for t in range(2):
        for w, patches in enumerate(windows):
            for patch in patches[patches >= 0]:
                r, c = divmod(int(patch), cols)
                block = np.s_[r * v.patch_size : (r + 1) * v.patch_size, c * v.patch_size : (c + 1) * v.patch_size]
                expected = frames[t][block] if keep[t, w] else (frames[t][block] * PRUNED_BRIGHTNESS).astype(np.uint8)
                np.testing.assert_array_equal(top[t][block], expected)
    # the score map: the highest-scoring window is the brightest viridis colour (yellow), the lowest the darkest
    bottom = picture[height:].reshape(height, 2, width, 3).transpose(1, 0, 2, 3).astype(int)
    best, worst = np.unravel_index(scores.argmax(), scores.shape), np.unravel_index(scores.argmin(), scores.shape)
    at = lambda t, w: divmod(int(windows[w][windows[w] >= 0][0]), cols)
    pixel = lambda t, w: bottom[t][at(t, w)[0] * v.patch_size, at(t, w)[1] * v.patch_size]
    assert pixel(*best).sum() > 500 and pixel(*worst).sum() < 250


def test_mfu_divides_by_the_listed_peak():
    h100 = ACCELERATORS["NVIDIA H100 80GB HBM3"]
    assert mfu(989.4e12 * 4 * 0.5, 1.0, 4, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert mfu(459e12, 2.0, 1, "TPU v5") == pytest.approx(0.5)
    assert math.isnan(mfu(1e12, 1.0, 1, "cpu"))
    assert h100.source


def test_model_flops_count_every_layer_once_per_use():
    """The count off the scanned model equals the count off the unrolled one and grows by the same amount
    with every LLM layer added (a scanned body counted once would not grow); it is the unoptimised
    program's count, within a few percent of the compiled unrolled step's (XLA's rewrites change it)."""
    import dataclasses

    from stts_jax.bench.workload import abstract_batch, prompt_length
    from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
    from stts_jax.train.step import init_state, model_flops, train_step
    from stts_jax.vlm.model import param_shapes

    cfg = get_config("tiny").with_stts(method="none")
    batch = abstract_batch(cfg, 2, 2, prompt_length(cfg, 2, 16))
    targets = jax.ShapeDtypeStruct(batch.input_ids.shape, batch.input_ids.dtype)

    def flops_of(model):
        optimizer = make_optimizer(OptimizerConfig(), param_shapes(model))
        state = jax.eval_shape(lambda b: init_state(model, optimizer, b, 0), batch)
        return model_flops(model, optimizer, state, batch, targets), (optimizer, state)

    layers = lambda n: cfg.replace(text=dataclasses.replace(cfg.text, num_hidden_layers=n))
    depth = cfg.text.num_hidden_layers
    scanned, _ = flops_of(cfg.replace(scan_layers=True))
    unrolled, (optimizer, state) = flops_of(cfg.replace(scan_layers=False))
    assert scanned == unrolled
    one_more, two_more = flops_of(layers(depth + 1))[0], flops_of(layers(depth + 2))[0]
    assert one_more - scanned == pytest.approx(two_more - one_more, rel=0.01) and one_more > scanned
    compiled = train_step.lower(cfg.replace(scan_layers=False), optimizer, state, batch, targets).compile()
    assert scanned == pytest.approx(float(compiled.cost_analysis()["flops"]), rel=0.1)


def test_the_event_file_holds_images_histograms_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from stts_jax.train.metrics import MetricsWriter

    writer = MetricsWriter(str(tmp_path))
    writer.write_hparams({"stts.prune_ratio": 0.5, "stts.method": "stts"}, ["validation/answer_accuracy"])
    picture = np.zeros((4, 6, 3), np.uint8)
    picture[1, 2] = (255, 0, 0)
    writer.write_images(3, {"validation/kept_windows/row0": picture})
    writer.write_histograms(3, {"validation/window_scores": np.array([0.1, 0.2, 0.2, 0.9])})
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0}).Reload()
    (image,) = events.Images("validation/kept_windows/row0")
    assert (image.step, image.width, image.height) == (3, 6, 4)
    import io

    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))), picture)
    (histogram,) = events.Histograms("validation/window_scores")
    assert histogram.histogram_value.num == 4 and histogram.histogram_value.max == pytest.approx(0.9)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["stts.prune_ratio"].number_value == 0.5 and info.hparams["stts.method"].string_value == "stts"
