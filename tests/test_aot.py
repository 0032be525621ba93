"""Ahead-of-time compilation for TPU slices on this CPU host: libtpu describes the slice, the TPU
compiler builds the program with the Mosaic splash kernels, and `stts_jax.aot` reads it back."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import pytest

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another JAX process may hold libtpu's lock
pytest.importorskip("libtpu", reason="libtpu is not installed: `pip install -e .[test]` brings it (jax[tpu])")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stts_jax.accelerators import ACCELERATORS  # noqa: E402
from stts_jax.aot import cost as aot_cost  # noqa: E402
from stts_jax.aot import programs as aot_programs  # noqa: E402
from stts_jax.aot import report as aot_report  # noqa: E402
from stts_jax.aot import topology as aot_topology  # noqa: E402
from stts_jax.errors import AOTError  # noqa: E402
from stts_jax.models.attention import SegmentMask, attend_segments  # noqa: E402
from stts_jax.models.variants import get_config  # noqa: E402
from stts_jax.train.optimizer import make_optimizer  # noqa: E402
from stts_jax.train.sharding import MeshConfig  # noqa: E402
from stts_jax.train.step import init_state, model_flops  # noqa: E402
from stts_jax.vlm.model import param_shapes  # noqa: E402
from stts_jax.windows import frame_windows  # noqa: E402

ROOT = pathlib.Path(__file__).parent.parent


def synthetic_config(arg: str = "variant=tiny"):
    spec = importlib.util.spec_from_file_location("synthetic", ROOT / "configs" / "synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_on_slice(fsdp: int = 4, topology: str = "v5e:2x2"):
    config = synthetic_config()
    config.train.mesh.fsdp = fsdp
    devices = aot_topology.topology_devices(topology)
    mesh = aot_topology.slice_mesh(MeshConfig(**config.train.mesh), devices, 1)
    return aot_programs.workload(config, hosts=1), mesh, aot_topology.chip_spec(devices[0])


def test_tiny_train_step_compiles_for_a_tpu_slice_with_splash_attention():
    w, mesh, chip = tiny_on_slice()
    report = aot_programs.train_report(w, mesh, chip, cost="scan")
    assert not report.error
    assert report.hbm_bytes == 16 * aot_topology.GIB  # v5e
    assert report.argument_bytes > 0 and report.output_bytes > 0 and report.temp_bytes > 0
    assert report.peak_bytes > 0 and report.fits
    # every Pallas kernel of the step, in the ViT (dense frames, packed frames) and the LLM (two passes)
    for kernel in ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"):  # forward and both backward kernels
        for site in ("vit", "llm"):
            assert any(k.startswith(kernel) and f" {site} [" in k for k in report.kernels), (kernel, site)
    # run per shard: a chip's kernels see one of the 4 rows (its frames, padded to 128 slots)
    v, t = w.model.vision, w.model.text
    assert report.kernels[
        f"splash_mha_fwd_segmented_residuals vit [{w.frames},{v.num_attention_heads},128,{v.head_dim}]"
    ]
    assert (
        report.kernels[f"splash_mha_fwd_segmented_residuals llm [{t.num_attention_heads},{w.llm_tokens},{t.head_dim}]"]
        == 2
    )
    assert not aot_report.failures([report])
    # model FLOPs: the step over the whole global batch as train.step.model_flops counts it, on the 4 chips
    batch, targets = aot_programs._batch(w, w.model, w.rows)
    optimizer = make_optimizer(w.optimizer, param_shapes(w.model))
    state = jax.eval_shape(lambda b: init_state(w.model, optimizer, b, 0), batch)
    assert report.model_flops == model_flops(w.model, optimizer, state, batch, targets)
    assert (report.chips, report.device_kind) == (4, "TPU v5 lite")


def test_mfu_is_model_flops_over_the_chips_peak_in_the_estimated_step_time():
    """The implied MFU divides the model FLOPs (not the compiled program's, remat included) by chips x the
    peak of the table in stts_jax.accelerators x the estimated step time; the table prints both counts."""
    report = aot_report.Report("train", "stts", 0.5, 640, hbm_bytes=16 * aot_topology.GIB, temp_bytes=aot_topology.GIB)
    report.flops, report.kernel_flops = 30e12, 3e12  # per chip, recomputation included
    report.xla_seconds, report.kernel_seconds, report.cost_source = 0.5, 0.1, "extrapolate"
    report.model_flops, report.chips, report.device_kind = 80e12, 4, "TPU v5 lite"
    peak = ACCELERATORS["TPU v5 lite"].peak_bf16_tflops * 1e12
    assert report.mfu == pytest.approx(80e12 / (4 * peak * 0.6))
    setup = {"topology": "v5e:2x2", "num_slices": 1, "chips": 4, "device_kind": "TPU v5 lite", "hosts": 1}
    setup |= {"hbm_gib_per_chip": 16, "peak_bf16_tflops": 197, "mesh": {"fsdp": 4}, "rows": 4}
    setup |= {"frames_per_row": 8, "videos_per_row": 2, "input_tokens": 1, "llm_tokens": 640}
    setup |= {"accumulate_steps": 1, "remat_policy": "full", "dtype": "bfloat16"}
    table = aot_report.format_reports(setup, [report])
    assert "peak for MFU: TPU v5 lite: 197 dense bf16 TFLOP/s per device (cloud.google.com/tpu/docs/v5e)" in table
    lines = table.splitlines()
    header, row = next(lines[i : i + 2] for i, line in enumerate(lines) if line.startswith("program"))
    cell = lambda name: row[: header.index(f" {name} ") + 1 + len(name)].split()[-1]  # right-aligned columns
    assert (cell("TFLOP"), cell("model"), cell("MFU")) == ("30.0", "20.0", f"{report.mfu:.1%}")
    report.cost_source = "scan"  # its time counts each layer stack once: no MFU
    assert math.isnan(report.mfu)


def test_prefill_model_flops_count_every_layer_and_the_attention_kernels_hide():
    """The configured model scans its layers and attends in splash kernels, which XLA counts once and not at
    all: its prefill's model FLOPs are those of the forward compiled with every layer and XLA attention."""
    w, _, _ = tiny_on_slice()
    assert w.model.scan_layers and w.model.attention_impl == "splash"
    counted = w.model.replace(scan_layers=False, attention_impl="xla")
    batch, _ = aot_programs._batch(w, w.model, w.rows)
    prefill = jax.jit(aot_programs.prefill_fn(counted, w.rows, w.llm_tokens))
    direct = float(prefill.lower(param_shapes(counted), batch).compile().cost_analysis()["flops"])
    assert aot_programs.prefill_model_flops(w) == pytest.approx(direct, rel=0.02)  # lowered, not compiled
    assert aot_programs.prefill_model_flops(w.baseline()) > 1.2 * aot_programs.prefill_model_flops(w)


def test_splash_kernel_flops_follow_the_blocks_the_mask_computes():
    """XLA prices a Mosaic kernel at ~0 FLOPs; the tool counts the causal mask's computed blocks."""
    devices = aot_topology.topology_devices("v5e:2x2")
    sharding = jax.sharding.SingleDeviceSharding(devices[0])
    b, t, h, d = 2, 512, 4, 128
    q = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16, sharding=sharding)
    segments = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=sharding)

    def attention(q, segment_ids):
        mask = SegmentMask.self_attention(segment_ids, causal=True)
        return attend_segments(q, q, q, mask, impl="splash")

    compiled = jax.jit(attention).lower(q, segments).compile()
    calls = aot_cost.mosaic_calls(compiled.as_text())
    assert [c.kernel for c in calls] == ["splash_mha_fwd_segmented_residuals"]
    blocks = 4 * 5 // 2  # 4 query blocks of 128, causal: the lower triangle of blocks
    cost = aot_cost.program_cost(compiled, get_config("tiny"), peak_flops=1e15)
    assert cost.kernel_flops == b * h * blocks * 128 * 128 * d * 2 * 2
    assert cost.kernel_seconds == cost.kernel_flops / 1e15


def test_packed_vit_blocks_are_counted_on_the_layout_the_packing_makes():
    """At k = 0 the estimate's even layout is the real packing of whole frames: the same block pairs as
    the row's own block lists, well under the static band's."""
    from stts_jax.models.attention import frame_blocks, splash_block_pairs
    from stts_jax.stts import packing

    model = get_config("molmo2-4b").with_stts(method="stts", prune_ratio=0.0)
    frames, n = 8, model.vision.num_patches
    layout = packing.FrameLayout.of(frame_windows(model), n)
    plan = packing.plan_packing(jnp.ones((1, frames, n), bool), layout.slots(frames * 81, frames), layout.granule)
    segments = np.pad(np.asarray(plan.segment_ids[0]), (0, -plan.segment_ids.shape[1] % 128))
    pairs = int((np.asarray(frame_blocks(jnp.asarray(segments), n)[1]) > 0).sum())
    assert aot_cost.packed_vit_block_pairs(len(segments), model) == pairs
    assert pairs < 0.65 * splash_block_pairs(len(segments), "full", n)


def test_bad_topologies_and_meshes_name_the_fix():
    with pytest.raises(AOTError, match="v5p:2x2x2"):
        aot_topology.topology_devices("v5p-16")  # the accelerator-type name, not a topology
    with pytest.raises(AOTError, match="libtpu rejected"):
        aot_topology.topology_devices("v5p:3x3x3")  # not a multiple of a host's 2x2x1 chips
    config = synthetic_config()
    config.train.mesh.fsdp = 3
    with pytest.raises(AOTError, match="product is 4"):
        aot_programs.run(config, "v5e:2x2")


@pytest.mark.slow  # 35 s; the splash train-step compile stays in the default suite
def test_a_cost_only_report_prices_the_step_without_judging_its_memory():
    w, mesh, chip = tiny_on_slice()
    report = aot_programs.train_report(w, mesh, chip, cost="scan", memory=False)
    assert not report.error and not report.memory_measured and report.flops > 0
    assert not report.fits and not aot_report.failures([report])  # nothing measured, nothing claimed
    setup = {"topology": "v5e:2x2", "num_slices": 1, "chips": 4, "device_kind": "TPU v5 lite", "hosts": 1}
    setup |= {"hbm_gib_per_chip": 16, "peak_bf16_tflops": 197, "mesh": dict(mesh.shape), "rows": w.rows}
    setup |= {"frames_per_row": w.frames, "videos_per_row": 2, "input_tokens": 1, "llm_tokens": w.llm_tokens}
    setup |= {"accumulate_steps": 1, "remat_policy": "none", "dtype": "float32"}
    table = aot_report.format_reports(setup, [report])
    assert "(cost only)" in table and "no MFU" in table


def test_a_program_over_hbm_is_a_failure_that_says_what_to_change():
    report = aot_report.Report(
        "train", "stts", 0.5, 640, hbm_bytes=16 * aot_topology.GIB, temp_bytes=20 * aot_topology.GIB
    )
    report.kernels = {"splash_mha_fwd_segmented_residuals llm [4,640,64]": 1}
    (problem,) = aot_report.failures([report])
    assert "20.00 GiB per chip" in problem and "accumulate_steps" in problem


def test_cli_exits_nonzero_with_the_reason():
    result = subprocess.run(
        [sys.executable, "-m", "stts_jax.aot", "--config=configs/synthetic.py:variant=tiny", "--topology=v5p-16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "error: --topology='v5p-16' is not a TPU slice" in result.stderr


@pytest.mark.slow
def test_extrapolated_cost_equals_the_fully_unrolled_program():
    """Costs from three small unrolled compiles, extrapolated in depth, equal those of every layer
    unrolled (v5p: its SparseCore hand-offs carry XLA's -1 s sentinel, which is removed)."""
    config = synthetic_config()
    config.train.mesh.fsdp = 4
    devices = aot_topology.topology_devices("v5p:2x2x1")
    mesh = aot_topology.slice_mesh(MeshConfig(**config.train.mesh), devices, 1)
    w, chip = aot_programs.workload(config, hosts=1), aot_topology.chip_spec(devices[0])
    build = aot_programs.train_build(w, mesh, w.rows, accumulate=1)
    direct = aot_cost.program_cost(build(w.model.replace(scan_layers=False)), w.model, chip[1])
    extrapolated = aot_cost.extrapolated_cost(build, w.model, chip[1])
    assert extrapolated.kernel_flops == direct.kernel_flops
    assert extrapolated.xla_flops == pytest.approx(direct.xla_flops, rel=1e-3)
    assert extrapolated.xla_seconds == pytest.approx(direct.xla_seconds, rel=0.02)
    assert direct.xla_seconds > 0


@pytest.mark.parametrize("name, hosts", [("molmo2_4b_v5p", 2), ("molmo2_4b_v6e", 8)])
def test_slice_configs_follow_the_paper_recipe(name, hosts):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    w = aot_programs.workload(module.get_config(""), hosts)
    assert (w.rows, w.frames, w.layout.max_videos_per_row, w.llm_tokens) == (64, 128, 2, 9686)  # STTS.md section 8
    assert w.input_tokens == 9686 + 64 * 81  # k = 0.5 prunes floor(81 * 0.5 * 128) windows per row
    assert w.model.attention_impl == "splash" and w.model.dtype == "bfloat16"
