"""Evaluation against independent computations.

- Option scores (the likelihood mode) and greedy tokens of `generate_and_score` (one prefill, then the
  KV cache) against full forwards without a cache over the prompt + the continuation, for an unpruned
  and a pruned (STTS, k = 0.5) tiny model; and no new trace of it for batches of other content.
- `evaluate`'s accuracy and per-family figures against hand counts, with a model whose answers are
  known by construction.
- An empty split, and the frame count of test-time scaling in the model's own windows per frame.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, stts_batch, synthetic_config

from stts_jax.data.synthetic import SyntheticConfig
from stts_jax.data.tokenizer import synthetic_tokenizer, token_id
from stts_jax.evaluate import multiple_choice
from stts_jax.evaluate.multiple_choice import evaluate, scaled_frames
from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.stts import budget
from stts_jax.vlm import generate
from stts_jax.vlm.generate import generate_and_score
from stts_jax.vlm.model import Molmo2, VideoBatch

FRAMES, SEQ, NEW_TOKENS = 4, 64, 6
ROWS = [[2], [4]]  # one example per row: a 2-frame and a 4-frame video
OPTION_LENGTHS = (2, 3, 4)  # K = 3 candidate continuations per row, 0 past their end
REFERENCE_LEN = SEQ + max(NEW_TOKENS, *OPTION_LENGTHS)
REFERENCE_ROWS = len(ROWS) * len(OPTION_LENGTHS)


def model_config(method: str):
    if method == "none":
        return get_config("tiny")
    return get_config("tiny", stts=STTSConfig(method=method, prune_ratio=0.5, layer=1))


# The test's own computations compile with XLA's cheap settings (about half the compile time on CPU);
# generate_and_score and evaluate compile as they always do.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_params(cfg, batch, seed=0):
    keys = {"params": jax.random.key(seed), "stts": jax.random.key(seed + 1)}
    return jax.jit(lambda b: Molmo2(cfg).init(keys, b)["params"], compiler_options=FAST)(batch)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST)
def full_forward(cfg, params, batch):
    """Log-probabilities, input ids and segment ids of the sequence the LLM ran on (compacted when pruning)."""
    logits, forward = Molmo2(cfg).apply({"params": params}, batch, rngs={"stts": jax.random.key(0)})
    return jax.nn.log_softmax(logits.astype(jnp.float32)), forward.tokens.input_ids, forward.tokens.segment_ids


def continued(batch: VideoBatch, rows: list[int], continuations: list[list[int]]) -> VideoBatch:
    """REFERENCE_ROWS rows (the last entry repeated to fill): row rows[i]'s prompt followed by
    continuations[i] as more tokens of the same example, positions continuing, padded to REFERENCE_LEN.
    The model runs without a cache over the whole sequence: compaction to the input's own length (the
    default layout)."""
    rows = rows + [rows[-1]] * (REFERENCE_ROWS - len(rows))
    continuations = continuations + [continuations[-1]] * (REFERENCE_ROWS - len(continuations))
    ids, seg = np.asarray(batch.input_ids), np.asarray(batch.segment_ids)
    out = np.zeros((3, REFERENCE_ROWS, REFERENCE_LEN), np.int32)  # ids, segment ids, positions
    for i, (r, tail) in enumerate(zip(rows, continuations, strict=True)):
        tokens = [*ids[r][seg[r] > 0].tolist(), *tail]
        out[0, i, : len(tokens)], out[1, i, : len(tokens)], out[2, i, : len(tokens)] = tokens, 1, range(len(tokens))
    take = lambda x: jnp.asarray(np.asarray(x)[rows])
    return VideoBatch(
        input_ids=jnp.asarray(out[0]),
        segment_ids=jnp.asarray(out[1]),
        positions=jnp.asarray(out[2]),
        pixel_values=take(batch.pixel_values),
        pooling_idx=take(batch.pooling_idx),
        frame_video_ids=take(batch.frame_video_ids),
    )


@pytest.fixture(scope="module", params=["none", "stts"])
def scored(request):
    """(cfg, params, batch, options [B, K, L], greedy tokens, option scores) of one generate_and_score call."""
    cfg = model_config(request.param)
    batch = stts_batch(cfg, ROWS, FRAMES, SEQ, seed=5, llm_seq_len=48, videos_per_row=1)
    params = init_params(cfg, batch)
    # sharper next-token distributions than the random init's near-uniform ones: a log-probability read
    # at the wrong token or slot is then far off, and greedy choices are not near-ties
    params = {**params, "lm_head": {"kernel": params["lm_head"]["kernel"] * 20}}
    rng = np.random.default_rng(1)
    options = np.zeros((len(ROWS), len(OPTION_LENGTHS), max(OPTION_LENGTHS)), np.int32)
    for k, length in enumerate(OPTION_LENGTHS):
        options[:, k, :length] = rng.integers(3, cfg.text.vocab_size, size=(len(ROWS), length))
    tokens, scores = generate_and_score(cfg, params, batch, jnp.asarray(options), NEW_TOKENS)
    return cfg, params, batch, options, np.asarray(tokens), np.asarray(scores)


def test_option_scores_are_summed_log_probabilities_of_a_full_forward(scored):
    cfg, params, batch, options, _, scores = scored
    pairs = [(r, k) for r in range(len(ROWS)) for k in range(len(OPTION_LENGTHS))]
    tails = [[int(t) for t in options[r, k] if t > 0] for r, k in pairs]
    log_p, ids, seg = map(np.asarray, full_forward(cfg, params, continued(batch, [r for r, _ in pairs], tails)))
    expected = np.zeros_like(scores)
    for i, ((r, k), tail) in enumerate(zip(pairs, tails, strict=True)):
        real = int((seg[i] > 0).sum())
        start = real - len(tail)  # the option's first token: the sequence's real tokens come first, in order
        assert ids[i, start:real].tolist() == tail
        expected[r, k] = sum(log_p[i, start - 1 + j, t] for j, t in enumerate(tail))
    assert np.ptp(expected) > 5  # options differ clearly in likelihood
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)


def test_greedy_tokens_are_step_by_step_argmax_of_full_forwards(scored):
    cfg, params, batch, _, tokens, _ = scored
    rows = list(range(len(ROWS)))
    generated = [[] for _ in rows]
    for _ in range(NEW_TOKENS):
        log_p, _, seg = map(np.asarray, full_forward(cfg, params, continued(batch, rows, generated)))
        for r in rows:
            last = int((seg[r] > 0).sum()) - 1
            top2 = np.sort(log_p[r, last])[-2:]
            assert top2[1] - top2[0] > 1e-3, "a near-tie would make the comparison fragile"
            generated[r].append(int(log_p[r, last].argmax()))
    np.testing.assert_array_equal(tokens, np.asarray(generated))
    assert len(np.unique(tokens)) > 2  # not a constant continuation


def test_generation_and_scoring_compile_once_across_batch_contents(scored, monkeypatch):
    """generate_and_score, compiled by `scored`, is not traced again for batches of other content in the
    same shapes: other pixels, frame counts within the 4 slots, prompt lengths within the 64 tokens, and
    options of other lengths."""
    cfg, params, batch, options, _, scores = scored
    traces = {"count": 0}
    prefill = generate._prefill

    def counting_prefill(*args, **kwargs):  # runs once per trace of generate_and_score
        traces["count"] += 1
        return prefill(*args, **kwargs)

    monkeypatch.setattr(generate, "_prefill", counting_prefill)
    compiled = generate.generate_and_score._cache_size()
    rng = np.random.default_rng(2)
    lengths, results = {tuple((np.asarray(batch.segment_ids) > 0).sum(1).tolist())}, [scores]
    for seed, rows in enumerate([[[4], [1]], [[3], [3]], [[1], [2]]], start=10):
        other = stts_batch(cfg, rows, FRAMES, SEQ, seed=seed, llm_seq_len=48, videos_per_row=1)
        lengths.add(tuple((np.asarray(other.segment_ids) > 0).sum(1).tolist()))
        other_options = np.where(
            np.arange(options.shape[2]) < rng.integers(1, options.shape[2] + 1, size=options.shape[:2])[..., None],
            rng.integers(3, cfg.text.vocab_size, size=options.shape),
            0,
        ).astype(np.int32)
        results.append(
            np.asarray(generate.generate_and_score(cfg, params, other, jnp.asarray(other_options), NEW_TOKENS)[1])
        )
    assert len(lengths) == 4 and not np.allclose(results[0], results[1])  # the content did change
    assert traces["count"] == 0, f"generate_and_score traced again ({traces['count']}x) for new content"
    assert generate.generate_and_score._cache_size() == compiled


# --- evaluate() against hand counts ---------------------------------------------------------------


class Records:
    """A source: __len__ and __getitem__ returning records shaped like the TFDS ones."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def record(frames, options, answer, family, seed):
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, size=(frames, 64, 64, 3), dtype=np.uint8),
        "timestamps": np.arange(frames, dtype=np.float32) * 0.5,
        "question": "what color is the moving object",
        "options": options,
        "answer": answer,
        "family": family,
    }


# (frames, options, answer, family). The model always answers "B" (see letter_b_model): by likelihood
# it picks option 1 where there is one and option 0 of a one-option question; by generation it writes
# "B", which is no option of the one-option question (-1).
EXAMPLES = [
    (2, ["red", "green", "blue"], 1, "motion"),  # both modes right
    (3, ["left", "right"], 0, "color"),  # both modes wrong
    (2, ["square"], 0, "motion"),  # likelihood right, generation wrong
]
EXPECTED_LIKELIHOOD = [1, 1, 0]
EXPECTED_GENERATE = [1, 1, -1]


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer(SyntheticConfig().vocabulary())


def letter_b_model(cfg, tokenizer):
    """Params of `cfg` whose LLM maps the last prompt token ("assistant") to "b", "b" to <|im_end|>, and
    nothing else to anything: attention and MLP outputs are zero, so each position's logits depend on
    its own token only, and only those two tokens have non-zero embeddings."""
    assistant, letter_b = (tokenizer.encode(t, add_special_tokens=False).ids[-1] for t in ("assistant\n", "B"))
    end = token_id(tokenizer, "<|im_end|>")
    batch = stts_batch(cfg, [[2]], 3, 48, videos_per_row=1)
    params = jax.tree.map(np.array, init_params(cfg, batch))
    text = params["text"]
    text["blocks"]["o"]["kernel"][:] = 0
    text["blocks"]["mlp"]["down"]["kernel"][:] = 0
    embedding = np.zeros_like(text["embed"]["embedding"])
    embedding[assistant, 0] = embedding[letter_b, 1] = 1.0
    text["embed"]["embedding"] = embedding
    head = np.zeros_like(params["lm_head"]["kernel"])
    head[0, letter_b] = head[1, end] = 10.0
    params["lm_head"]["kernel"] = head
    return jax.tree.map(jnp.asarray, params)


def test_accuracy_and_families_match_hand_counts(tokenizer):
    cfg = model_config("stts")
    params = letter_b_model(cfg, tokenizer)
    source = Records([record(*example, seed=i) for i, example in enumerate(EXAMPLES)])
    # batch_size 2: the second batch holds one example and one padding row
    results = evaluate(cfg, params, source, tokenizer, batch_size=2, progress=False)
    predictions = results["predictions"]
    assert [p["index"] for p in predictions] == [0, 1, 2]
    assert [p["likelihood"] for p in predictions] == EXPECTED_LIKELIHOOD
    assert [p["generate"] for p in predictions] == EXPECTED_GENERATE
    assert [(p["answer"], p["family"]) for p in predictions] == [(e[2], e[3]) for e in EXAMPLES]
    assert results["examples"] == 3
    assert results["accuracy"] == {"generate": pytest.approx(1 / 3), "likelihood": pytest.approx(2 / 3)}
    assert results["families"] == {
        "color": {"count": 1, "generate": 0.0, "likelihood": 0.0},
        "motion": {"count": 2, "generate": pytest.approx(0.5), "likelihood": pytest.approx(1.0)},
    }
    assert list(results["families"]) == ["color", "motion"]
    assert results["frames_per_example"] == pytest.approx(7 / 3)
    # 9 windows per frame, k = 0.5: 2 frames keep 18 - 9, 3 frames keep 27 - 13
    assert results["vision_tokens_per_example"] == pytest.approx((9 + 14 + 9) / 3)


def test_an_empty_split_is_named(tokenizer):
    cfg = model_config("none")
    with pytest.raises(ValueError, match="the evaluation split is empty"):
        evaluate(cfg, {}, Records([]), tokenizer, progress=False)
    with pytest.raises(ValueError, match="the evaluation split is empty"):
        evaluate(cfg, {}, Records([record(*EXAMPLES[0], seed=0)]), tokenizer, limit=0, progress=False)


def test_examples_are_read_as_the_batches_need_them(tokenizer, monkeypatch):
    """A host holds one batch's frames, not the split's: by the k-th forward pass, only the first k batches'
    records have been read (a benchmark of thousands of 64-frame videos would not fit in host memory)."""
    reads, seen = [], []

    class Counted(Records):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    def fake_generate_and_score(cfg, params, batch, candidates, max_new_tokens):
        seen.append(len(reads))
        rows = candidates.shape[0]
        return np.zeros((rows, max_new_tokens), np.int32), np.zeros(candidates.shape[:2], np.float32)

    monkeypatch.setattr(multiple_choice, "generate_and_score", fake_generate_and_score)
    source = Counted([record(*example, seed=i) for i, example in enumerate(EXAMPLES)])
    results = evaluate(model_config("none"), {}, source, tokenizer, batch_size=1, progress=False)
    assert results["examples"] == len(EXAMPLES)
    assert seen == [1, 2, 3]


# --- test-time scaling in the model's windows per frame -------------------------------------------


def test_test_time_scaling_counts_the_models_windows(tmp_path):
    config = synthetic_config(str(tmp_path), 1, 1)  # tiny, 4 frames
    cfg = get_config("tiny", stts=STTSConfig(method="stts", prune_ratio=0.7))
    frames = scaled_frames(cfg, config)
    assert frames == 13
    # tiny has 9 windows per frame: 13 frames keep 117 - floor(81.9) = 36 = the unpruned 4 x 9; 12 keep 33
    assert budget.kept_windows(frames, 9, 0.7) >= 4 * 9 > budget.kept_windows(frames - 1, 9, 0.7)
    assert scaled_frames(cfg.with_stts(method="none"), config) == 4
    assert scaled_frames(cfg.with_stts(prune_ratio=0.5), config) == 8
    assert scaled_frames(cfg.with_stts(method="fewer_frames"), config) == 13  # as the sweep scales it


CLI = """
import json, sys
from absl import flags
import stts_jax.evaluate.__main__ as cli
from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
sys.path.insert(0, "tests")
from conftest import synthetic_config

class Stop(Exception):
    pass

def source(data_config, split):
    print("DATA", json.dumps({"frames": data_config.data.frames, "fps": data_config.data.fps}))
    raise Stop

trained = get_config("tiny", stts=STTSConfig(method="stts", prune_ratio=0.5))
cli.run_config = lambda path: synthetic_config(sys.argv[2], 1, 1)
cli.restore_params = lambda path, step=None: (trained, {"scorer": {}}, 0)
cli.source = source
flags.FLAGS(["evaluate", f"--checkpoint={sys.argv[1]}", "--test_time_scaling", "--prune_ratio=0.7"])
try:
    cli.main([])
except Stop:
    pass
"""


def test_evaluate_cli_scales_frames_in_the_models_windows(tmp_path):
    """`python -m stts_jax.evaluate --test_time_scaling` on a tiny run trained at 4 frames, evaluated at
    k = 0.7: the data it asks for has 13 frames (not the 14 of 81-window frames)."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, "-c", CLI, str(tmp_path / "run"), str(tmp_path / "data")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("DATA "))[5:])
    assert data == {"frames": 13, "fps": pytest.approx(2.0 * 13 / 4)}
