"""The Hugging Face export as others use it: transformers' own classes load the folder (tokenizer, processor
settings, chat template, generation defaults, weights) and give our pipeline's ids and our model's logits; the
scorer under the authors' PyTorch names round-trips and scores like ours; bad input costs one line and no files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, synthetic_config
from safetensors import safe_open
from tokenizers import Tokenizer

from stts_jax.convert.__main__ import main as convert_main
from stts_jax.convert.hf import hf_video_logits
from stts_jax.convert.hf_processor import (
    CHAT_TOKENS,
    GENERATION_CONFIG_FILE,
    PROCESSOR_FILES,
    VISION_TOKENS,
    ProcessorSource,
    vision_token_ids,
    with_vision_tokens,
)
from stts_jax.convert.scorer import PREFIX, SCORER_FILE, save_scorer, scorer_from_torch, scorer_shapes, scorer_to_torch
from stts_jax.data.frames import video_patches
from stts_jax.data.prompt import format_question, video_prompt
from stts_jax.data.sources import synthetic_settings, tokenizer_of
from stts_jax.data.synthetic import generate_example
from stts_jax.data.tokenizer import synthetic_tokenizer
from stts_jax.errors import CheckpointError
from stts_jax.export.formats import export, export_run, load_export, processor_source
from stts_jax.models import get_config
from stts_jax.stts.scorer import Scorer
from stts_jax.train import checkpoint
from stts_jax.train.experiment import manifest_data_section, model_config
from stts_jax.vlm.model import param_shapes
from stts_jax.windows import pooling_windows, video_pooling_indices, windows_per_frame


def random_params(shapes, seed: int = 0):
    """Params of the shapes `shapes` (a tree of ShapeDtypeStructs) drawn at the scale of trained ones: norm scales
    1 + 0.2 N(0, 1), matrices N(0, 1 / fan_in) (stacked blocks: [layers, in, out]), the rest 0.5 N(0, 1)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            value = 1.0 + 0.2 * rng.normal(size=s.shape)
        elif name.endswith("['kernel']"):
            value = rng.normal(size=s.shape) / np.sqrt(s.shape[-2])
        else:
            value = 0.5 * rng.normal(size=s.shape)
        return value.astype(s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_scorer(cfg, seed: int = 0) -> dict:
    return random_params(scorer_shapes(cfg), seed)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, experiment config, model config, params): a tiny STTS run (k = 0.5, synthetic set) as training
    leaves it, its config.json and an Orbax checkpoint written through the run's own checkpoint manager, with
    random weights: training would add a minute and change nothing these tests check."""
    root = tmp_path_factory.mktemp("export_hf")
    config = synthetic_config(str(root / "data"), 1, 1)
    cfg = model_config(config)
    params = random_params(param_shapes(cfg))
    workdir = root / "run"
    workdir.mkdir()
    checkpoint.record_experiment(str(workdir), config, resuming=False)
    mgr = checkpoint.manager(str(workdir))
    mgr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
    mgr.wait_until_finished()
    return str(workdir), config, cfg, params


def our_inputs(config, cfg) -> tuple[dict, str, np.ndarray]:
    """A synthetic video and its question as our pipeline feeds them to the model (in transformers' processor
    format), the question's text, and the video [T, H, W, 3] uint8."""
    synthetic = synthetic_settings(config.data)
    example = generate_example(1, 0, synthetic)
    times = np.arange(synthetic.frames) / synthetic.fps
    prompt = video_prompt(
        tokenizer_of(config), cfg, times, windows_per_frame(cfg), example["question"], example["options"]
    )
    rows, cols = cfg.vision.patch_grid
    pooled_grid = [-(-n // pool) for n, pool in zip((rows, cols), cfg.adapter.pooling_size, strict=True)]
    inputs = {
        "input_ids": prompt["input_ids"][None].astype(np.int64),
        "attention_mask": np.ones((1, len(prompt["input_ids"])), np.int64),
        "pixel_values_videos": video_patches(example["video"], cfg.vision.image_size[0], cfg.vision.patch_size),
        "video_token_pooling": video_pooling_indices(synthetic.frames, rows, cols).astype(np.int64),
        "video_grids": np.asarray([[synthetic.frames, *pooled_grid]], np.int64),
        # the bidirectional vision block (transformers attends causally everywhere without it)
        "mm_token_type_ids": np.isin(prompt["input_ids"], cfg.vision_token_ids)[None].astype(np.int64),
    }
    return inputs, format_question(example["question"], example["options"]), example["video"]


def test_hf_folder_holds_what_transformers_reads_and_gives_our_ids_and_logits(run, tmp_path):
    """What transformers reads without torchvision (its Molmo2 image / video processors need it): the exported
    tokenizer, chat template and processor settings give our prompt's ids through Molmo2Processor's own prompt
    code, and the exported weights give our logits on them. With torchvision, the test below runs the whole
    AutoProcessor."""
    torch = pytest.importorskip("torch")
    import transformers
    from transformers.models.molmo2.processing_molmo2 import Molmo2Processor

    workdir, config, cfg, params = run
    out = str(tmp_path / "hf")
    assert export_run(workdir, out, "hf") == 7
    assert {"config.json", "model.safetensors", GENERATION_CONFIG_FILE, SCORER_FILE, "stts_config.json"} | set(
        PROCESSOR_FILES
    ) == set(os.listdir(out))
    config_json = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config_json["dtype"] == config_json["torch_dtype"] == "float32"

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids(list(VISION_TOKENS)) == list(vision_token_ids(cfg).values())
    assert tokenizer.convert_tokens_to_ids(["<frame_start>", "<im_patch>", "<frame_end>"]) == [
        cfg.frame_start_token_id,
        cfg.image_patch_id,
        cfg.frame_end_token_id,
    ]
    assert (tokenizer.image_token, tokenizer.video_token, tokenizer.padding_side) == ("<|image|>", "<|video|>", "left")
    generation = transformers.GenerationConfig.from_pretrained(out)
    end, bos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert (generation.eos_token_id, generation.bos_token_id, generation.pad_token_id) == (end, bos, bos)

    ours, question, _ = our_inputs(config, cfg)
    # Molmo2Processor.__call__'s text path: chat template, <|video|> -> the video string, bos, tokenizer
    settings, _ = Molmo2Processor.get_processor_dict(out)
    processor = object.__new__(Molmo2Processor)
    processor.video_use_col_tokens = settings["video_use_col_tokens"]
    processor.use_frame_special_tokens = settings["use_frame_special_tokens"]
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    grid = ours["video_grids"][0]
    synthetic = synthetic_settings(config.data)
    video = processor.get_video_string(grid, [i / synthetic.fps for i in range(grid[0])])
    ids = tokenizer(text.replace(tokenizer.video_token, video)).input_ids
    assert text.startswith(tokenizer.bos_token)
    np.testing.assert_array_equal(ids, ours["input_ids"][0])

    model = transformers.Molmo2ForConditionalGeneration.from_pretrained(out).eval()
    assert model.generation_config.eos_token_id == end
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in ours.items()}).logits.numpy()
    backbone = {k: v for k, v in params.items() if k != "scorer"}
    np.testing.assert_allclose(hf_video_logits(cfg.with_stts(method="none"), backbone, ours), theirs, atol=1e-4)


def test_auto_processor_turns_a_video_into_our_inputs(run, tmp_path):
    """transformers.AutoProcessor on the exported folder, on a synthetic video and its question: our token ids,
    our windows, our pixels (up to the one grey level test_frames.py explains), and logits equal to ours."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision", exc_type=ImportError)
    import transformers
    from transformers.video_utils import VideoMetadata

    workdir, config, cfg, params = run
    out = str(tmp_path / "hf")
    export_run(workdir, out, "hf")
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Molmo2Processor"
    ours, question, video = our_inputs(config, cfg)
    synthetic = synthetic_settings(config.data)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    metadata = VideoMetadata(total_num_frames=synthetic.frames, fps=synthetic.fps)
    theirs = processor(
        text=text, videos=[video], video_metadata=[metadata], do_sample_frames=False, return_tensors="np"
    )
    assert theirs.keys() == ours.keys()
    for name in ("input_ids", "attention_mask", "mm_token_type_ids", "video_token_pooling", "video_grids"):
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
    assert np.abs(theirs["pixel_values_videos"] - ours["pixel_values_videos"]).max() <= 2 / 255 + 1e-6
    model = transformers.Molmo2ForConditionalGeneration.from_pretrained(out).eval()
    inputs = dict(theirs)
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}).logits.numpy()
    backbone = {k: v for k, v in params.items() if k != "scorer"}
    np.testing.assert_allclose(hf_video_logits(cfg.with_stts(method="none"), backbone, inputs), expected, atol=1e-4)


def test_bfloat16_export_loads_as_bfloat16(run, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    workdir, _, _, params = run
    out = tmp_path / "bf16"
    export_run(workdir, str(out), "hf", dtype="bfloat16")
    for name in ("model.safetensors", SCORER_FILE):
        with safe_open(str(out / name), "np") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}, name  # noqa: SIM118
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["dtype"] == config_json["torch_dtype"] == "bfloat16"
    model = transformers.Molmo2ForConditionalGeneration.from_pretrained(str(out), dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    _, loaded = load_export(str(out))
    assert {x.dtype for x in jax.tree.leaves(loaded)} == {np.dtype(np.float32)}  # the model's param dtype
    half = lambda x: np.asarray(x).astype(jax.numpy.bfloat16).astype(np.float32)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, half(b))  # the bfloat16 values, read back into the model's float32

    export_run(workdir, str(tmp_path / "orbax"), "orbax", dtype="bfloat16")
    _, loaded = load_export(str(tmp_path / "orbax"))
    assert {x.dtype for x in jax.tree.leaves(loaded)} == {np.dtype(jax.numpy.bfloat16)}


def test_scorer_round_trips_through_the_authors_names():
    cfg = get_config("tiny").with_stts(method="stts")
    ours = random_scorer(cfg)
    theirs = scorer_to_torch(ours)
    modules = ["patch_token_pooler.w" + p for p in "qkvo"] + ["mlp.w1", "mlp.w2", "mlp.w3"]
    assert set(theirs) == {PREFIX + m + s for m in modules for s in (".weight", ".bias")}
    d, m = cfg.vision.hidden_size, cfg.vision.intermediate_size
    shapes = {k[len(PREFIX) :]: v.shape for k, v in theirs.items()}
    assert shapes["mlp.w1.weight"] == (m, 2 * d) and shapes["mlp.w3.weight"] == (1, m)  # torch Linear: [out, in]
    np.testing.assert_array_equal(theirs[PREFIX + "patch_token_pooler.wq.weight"], ours["pooler"]["q"]["kernel"].T)
    back = scorer_from_torch(theirs, cfg)
    flat, flat_back = (flax.traverse_util.flatten_dict(t, sep="/") for t in (ours, back))
    assert flat.keys() == flat_back.keys()
    for name in flat:
        np.testing.assert_array_equal(flat_back[name], flat[name], err_msg=name)

    wq = PREFIX + "patch_token_pooler.wq.weight"
    for edit, message in [
        (lambda t: t.pop(PREFIX + "mlp.w2.bias"), r"'.*mlp.w2.bias' is missing"),
        (lambda t: t.update({wq: t[wq].T[:, :-1]}), r"patch_token_pooler.wq.weight' has shape \(32, 31\)"),
        (lambda t: t.update({PREFIX + "mlp.w4.weight": t[wq]}), r"does not have, e.g. \['.*mlp.w4.weight'\]"),
    ]:
        tensors = dict(theirs)
        edit(tensors)
        with pytest.raises(CheckpointError, match=message):
            scorer_from_torch(tensors, cfg)


def authors_scorer(state: dict, heads: int, kv_heads: int):
    """`TemporalTokenScorer` of the authors' olmo/nn/temporal_image_vit.py restated in torch for one video (its
    `ViTMultiHeadDotProductAttention` pooler without mask, its `ScorerMLP`), with their module names, loaded
    strictly from `state` (their names, PREFIX cut): x [frames, patches, dim], pooled_patches_idx
    [frames * windows, 9] over the frames' patches -> scores [frames, windows]."""
    import torch
    from torch import nn

    def linear(name: str) -> nn.Linear:
        out_dim, in_dim = state[name + ".weight"].shape
        return nn.Linear(in_dim, out_dim)

    class Pooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq, self.wk, self.wv, self.wo = (linear(f"patch_token_pooler.w{p}") for p in "qkvo")

        def forward(self, inputs_q, inputs_kv):
            q, k, v = self.wq(inputs_q), self.wk(inputs_kv), self.wv(inputs_kv)
            head_dim = q.shape[-1] // heads
            q = q.reshape(*q.shape[:2], heads, head_dim)
            k, v = (t.reshape(*t.shape[:2], kv_heads, head_dim).repeat_interleave(heads // kv_heads, 2) for t in (k, v))
            weights = torch.softmax(torch.einsum("...qhd,...khd->...hqk", q / head_dim**0.5, k), dim=-1)
            return self.wo(torch.einsum("...hqk,...khd->...qhd", weights, v).flatten(2))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2, self.w3 = (linear(f"mlp.w{i}") for i in (1, 2, 3))

        def forward(self, x):
            return self.w3(nn.functional.silu(self.w2(nn.functional.silu(self.w1(x))))).squeeze(-1)

    class TemporalTokenScorer(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_token_pooler, self.mlp = Pooler(), MLP()

        def forward(self, x, pooled_patches_idx):
            frames, _, dim = x.shape
            valid = pooled_patches_idx >= 0
            to_pool = x.reshape(-1, dim)[torch.clip(pooled_patches_idx, 0)] * valid.float()[:, :, None]
            pooled = self.patch_token_pooler(to_pool.mean(-2, keepdim=True), to_pool).reshape(frames, -1, dim)
            padded = torch.cat([torch.zeros_like(pooled[:1]), pooled])  # frame 0's previous frame: zeros
            return torch.sigmoid(self.mlp(torch.cat([padded[:-1], padded[1:]], dim=-1)))

    scorer = TemporalTokenScorer()
    scorer.load_state_dict(state, strict=True)
    return scorer.eval()


@pytest.mark.parametrize("image_size", [36, 42])  # 6 x 6 patches: 4 full windows; 7 x 7: 9 with ragged borders
def test_the_authors_scorer_loaded_from_our_file_scores_like_ours(image_size, tmp_path):
    pytest.importorskip("torch")
    import torch
    from safetensors.torch import load_file

    tiny = get_config("tiny")
    cfg = tiny.replace(vision=tiny.vision.__class__(**{**tiny.vision.__dict__, "image_size": (image_size,) * 2}))
    cfg = cfg.with_stts(method="stts")
    params = random_scorer(cfg, seed=image_size)
    save_scorer(params, str(tmp_path / SCORER_FILE))
    state = {k[len(PREFIX) :]: v for k, v in load_file(str(tmp_path / SCORER_FILE)).items()}
    v = cfg.vision
    authors = authors_scorer(state, v.num_attention_heads, v.num_key_value_heads)

    frames, (rows, cols) = 3, v.patch_grid
    x = np.random.default_rng(1).normal(size=(frames, rows * cols, v.hidden_size)).astype(np.float32)
    with torch.no_grad():
        theirs = authors(torch.from_numpy(x), torch.from_numpy(video_pooling_indices(frames, rows, cols))).numpy()
    windows = pooling_windows(rows, cols)
    valid = windows >= 0
    window_patches = np.where(valid[None, :, :, None], x[:, np.clip(windows, 0, None)], 0.0)
    ours = Scorer(cfg).apply({"params": params}, window_patches[None], valid, np.arange(frames)[None])[0]
    full = valid.all(1)
    assert theirs.shape == ours.shape == (frames, len(windows)) and full.any()
    np.testing.assert_allclose(ours[:, full], theirs[:, full], atol=1e-5)
    # where a window has padding slots they average and attend zeros, we do not (stts_jax/convert/scorer.py)
    assert full.all() == (image_size == 36)
    if not full.all():
        assert np.abs(ours[:, ~full] - theirs[:, ~full]).max() > 1e-3


def test_converting_an_stts_export_says_so_in_one_line(run, tmp_path, capsys):
    workdir, *_ = run
    export_run(workdir, str(tmp_path / "orbax"), "orbax")
    assert convert_main(["orbax-to-hf", f"--src={tmp_path / 'orbax'}", f"--dst={tmp_path / 'hf'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is an STTS export: it holds the STTS scorer" in lines[0], lines
    assert "python -m stts_jax.export --workdir=RUN --format=hf" in lines[0]
    export_run(workdir, str(tmp_path / "stts_hf"), "hf")
    assert convert_main(["hf-to-orbax", f"--src={tmp_path / 'stts_hf'}", f"--dst={tmp_path / 'o'}"]) == 2
    assert "--format=orbax" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "o").exists()
    assert sorted(os.listdir(tmp_path)) == ["orbax", "stts_hf"]  # nothing half-written beside them either


def test_the_processor_tokenizer_comes_from_the_run_or_its_init_from(run, tmp_path):
    _, config, _, _ = run
    tokenizer = tokenizer_of(config)
    manifest = ml_collections.ConfigDict({"data": manifest_data_section(4, 1, 1, 64, 0), "train": {"init_from": ""}})
    manifest["data"]["tokenizer"] = str(tmp_path / "gone" / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"the run's tokenizer cannot be read \(.*gone/tokenizer.json not found"):
        processor_source(manifest)
    (tmp_path / "pretrained").mkdir()
    tokenizer.save(str(tmp_path / "pretrained" / "tokenizer.json"))
    manifest["train"]["init_from"] = str(tmp_path / "pretrained")
    source = processor_source(manifest)
    assert source.tokenizer.to_str() == tokenizer.to_str() and (source.frames, source.max_fps) == (4, 2.0)
    synthetic = processor_source(config)
    assert (synthetic.frames, synthetic.max_fps) == (config.data.frames, 2.0)


def test_bad_input_gets_one_line_and_nothing_is_written(run, tmp_path):
    workdir, config, cfg, params = run
    vocabulary = synthetic_tokenizer(["red", "blue"])
    with pytest.raises(CheckpointError, match=r"has no \['<\|im_start\|>'\]"):
        bare = Tokenizer.from_str(vocabulary.to_str().replace("<|im_start|>", "<|im_begin|>"))
        with_vision_tokens(bare, cfg)
    moved = synthetic_tokenizer(["red", "blue"])
    moved.add_special_tokens(["<frame_start>"])
    with pytest.raises(CheckpointError, match=r"has <frame_start> at id \d+, the model config at 519"):
        with_vision_tokens(moved, cfg)
    big = synthetic_tokenizer([f"w{i}" for i in range(600)])
    with pytest.raises(CheckpointError, match=r"has 6\d\d tokens, so <im_start> cannot take id 512"):
        with_vision_tokens(big, cfg)
    fine = with_vision_tokens(vocabulary, cfg)
    assert [fine.token_to_id(t) for t in CHAT_TOKENS] == [vocabulary.token_to_id(t) for t in CHAT_TOKENS]
    assert vocabulary.token_to_id("<im_start>") is None  # the caller's tokenizer is left as it was

    # a tokenizer that does not fit is found after the folder was started: nothing of it is left
    with pytest.raises(CheckpointError, match="cannot take id 512"):
        export(cfg, params, str(tmp_path / "x"), "hf", processor=ProcessorSource(big, 4, 2.0))
    assert os.listdir(tmp_path) == []

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    command = [sys.executable, "-m", "stts_jax.export", f"--workdir={workdir}", f"--out={tmp_path / 'taken'}"]
    cli = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == 1, cli.stderr[-2000:]
    assert cli.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'taken'} is not empty; choose a new output directory (nothing was overwritten)."
    ]
    assert os.listdir(tmp_path / "taken") == ["notes.txt"]
