"""`python -m stts_jax.evaluate --benchmarks`: Table 1 from converted manifests, per-sample predictions, and the
reading of generated answers.

The model of the command tests is built so that its answers are known: whatever the video and the question, it
generates "answer is b" and stops, and by likelihood it prefers "c" among the letters (then "b") and "no" to "yes"
(the second of the two: a reading that takes the first candidate, or the first of a tie, is caught). Each
setting's accuracy by both modes is then fixed by its answers, and the table must equal what its predictions
file says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, stts_batch
from test_benchmarks_convert import mvbench, nextqa_parquet, tempcompass_json, videomme_subtitles
from test_video import write_video

from stts_jax.benchmarks.conversion import convert
from stts_jax.benchmarks.registry import BENCHMARKS
from stts_jax.data.tokenizer import synthetic_tokenizer, token_id
from stts_jax.errors import ConfigError
from stts_jax.evaluate.benchmarks import benchmark_names, find_manifest, markdown_table1, table1
from stts_jax.evaluate.multiple_choice import read_generation
from stts_jax.export.formats import export
from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.vlm.model import Molmo2

OPTIONS = ["red", "green", "blue", "white", "black"]
WORDS = ["what", "colour", "is", "the", "ball", "does", "it", "move", "answer", "yes", "no", "a", "b", "c", "d", "e"]


# --- reading a generated answer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("B", OPTIONS[:3], 1),  # the letter alone: what exact-token scoring accepted, still correct
        ("b", OPTIONS[:3], 1),
        ("The answer is (B)", OPTIONS[:3], 1),
        ("The answer is (B).\nThe ball is green.", OPTIONS[:3], 1),
        ("answer is b", OPTIONS[:3], 1),  # what the synthetic tokenizer decodes from the command test's model
        ("(C) blue", OPTIONS[:3], 2),
        ("Blue.", OPTIONS[:3], 2),  # the option's words
        ("E", OPTIONS[:3], -1),  # a letter past the options
        ("I cannot tell from the video.", OPTIONS[:3], -1),  # nothing guessed
        ("Yes, it moves left.", (), 0),  # no options: a free-text yes/no answer
        ("no", (), 1),
        ("Not sure", (), -1),
        ("answer is b", (), -1),
        ("B", ("yes", "no"), 1),  # options that are yes and no: still a multiple-choice question
        ("No.", ("yes", "no"), 1),
    ],
)
def test_generated_answers_are_read_as_the_harnesses_read_them(text, options, expected):
    assert read_generation(text, options) == expected


# --- Table 1 arithmetic ---------------------------------------------------------------------------


def test_the_overall_average_is_the_mean_of_the_short_and_long_averages():
    """The paper's baseline row (STTS.md section 8): short 67.0, long 59.0, average 63.0, which is not the mean over
    the 13 settings ((6 * 67 + 7 * 59) / 13 = 62.7)."""
    results = {
        name: {"accuracy": {"generate": (0.67 if b.group == "short" else 0.59), "likelihood": 0.5}}
        for name, b in BENCHMARKS.items()
    }
    table = table1(results)
    assert table["short"]["generate"] == pytest.approx(0.67) and table["long"]["generate"] == pytest.approx(0.59)
    assert table["overall"]["generate"] == pytest.approx(0.63)
    assert (len(table["short"]["settings"]), len(table["long"]["settings"])) == (6, 7)
    assert "| 67.0 | 59.0 | 63.0 |" in markdown_table1(table, "baseline")
    results["nextqa"], results["lvbench"] = {"accuracy": {"generate": 0.0, "likelihood": 0.0}}, None
    table = table1(results)
    assert table["short"]["generate"] == pytest.approx(0.67 * 5 / 6)  # each setting counts once
    assert table["long"]["generate"] == pytest.approx(0.59) and table["long"]["settings"] == [
        n for n, b in BENCHMARKS.items() if b.group == "long" and n != "lvbench"
    ]
    assert "| 59.0 (6/7) |" in markdown_table1(table, "run")


def test_benchmark_names_and_manifest_places(tmp_path):
    assert benchmark_names("all") == list(BENCHMARKS)
    assert benchmark_names("videomme, nextqa") == ["nextqa", "videomme"]  # Table 1's order
    for bad in ("nextqa,videomme_subs", ""):
        with pytest.raises(ConfigError, match="--benchmarks=.*from: nextqa, perceptiontest"):
            benchmark_names(bad)
    for path in ("nextqa/nextqa.jsonl", "videomme.jsonl", "videomme/videomme_subtitles.jsonl", "a/mlvu.jsonl"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("")
    assert find_manifest(str(tmp_path), "nextqa") == str(tmp_path / "nextqa/nextqa.jsonl")
    assert find_manifest(str(tmp_path), "videomme") == str(tmp_path / "videomme.jsonl")
    assert find_manifest(str(tmp_path), "videomme_subtitles") == str(tmp_path / "videomme/videomme_subtitles.jsonl")
    assert find_manifest(str(tmp_path), "lvbench") is None
    (tmp_path / "b").mkdir()
    (tmp_path / "b/mlvu.jsonl").write_text("")
    with pytest.raises(ConfigError, match="mlvu has 2 manifests"):
        find_manifest(str(tmp_path), "mlvu")


# --- the command ------------------------------------------------------------------------------------


def chain_model(cfg, tokenizer):
    """Params of `cfg` whose LLM maps each token to the next of "assistant" -> "answer" -> "is" -> "b" ->
    <|im_end|>, and after "assistant" ranks "c" > "no" > "b" above every other letter and "yes": attention and MLP
    outputs are zero, so a position's logits depend on its own token only."""
    ids = {w: tokenizer.encode(w, add_special_tokens=False).ids[-1] for w in ("assistant", "answer", "is", "b", "c")}
    ids |= {w: tokenizer.token_to_id(w) for w in ("yes", "no")}
    batch = stts_batch(cfg, [[2]], 3, 48, videos_per_row=1)
    keys = {"params": jax.random.key(0), "stts": jax.random.key(1)}
    params = jax.tree.map(np.array, jax.jit(lambda b: Molmo2(cfg).init(keys, b)["params"])(batch))
    text = params["text"]
    text["blocks"]["o"]["kernel"][:] = 0
    text["blocks"]["mlp"]["down"]["kernel"][:] = 0
    chain = ["assistant", "answer", "is", "b"]
    embedding = np.zeros_like(text["embed"]["embedding"])
    for dim, word in enumerate(chain):
        embedding[ids[word], dim] = 1.0
    text["embed"]["embedding"] = embedding
    head = np.zeros_like(params["lm_head"]["kernel"])
    for dim, following in enumerate([ids["answer"], ids["is"], ids["b"], token_id(tokenizer, "<|im_end|>")]):
        head[dim, following] = 10.0
    head[0, ids["c"]], head[0, ids["no"]], head[0, ids["b"]] = 7.0, 5.0, 1.0
    params["lm_head"]["kernel"] = head
    return jax.tree.map(jnp.asarray, params)


# Per setting: (where its manifest goes under the data root, [(options or None, answer)]). The model generates
# "answer is b" (option B; no yes/no) and by likelihood picks C where there are three options or more, else B,
# and "no". Every setting has a 4-option question: the same shapes, one compile.
SETTINGS = {
    "nextqa": ("nextqa/nextqa.jsonl", [(4, 1), (4, 1), (4, 2), (4, 0)]),
    "tempcompass": ("tempcompass/tempcompass.jsonl", [(4, 1), (4, 2), (None, "yes"), (None, "no"), (None, "yes")]),
    "videomme": ("videomme.jsonl", [(4, 1), (4, 1), (4, 3)]),
    "videomme_subtitles": ("videomme/videomme_subtitles.jsonl", [(4, 2), (2, 1)]),
}
EXPECTED = {  # (generate, likelihood)
    "nextqa": (2 / 4, 1 / 4),
    "tempcompass": (1 / 5, 2 / 5),  # yes/no: never by generation ("answer is b"), "no" by likelihood
    "videomme": (2 / 3, 0.0),
    "videomme_subtitles": (1 / 2, 2 / 2),
}


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory):
    """(export folder, data root): the chain model exported with its tokenizer.json beside it, and one manifest
    per entry of SETTINGS in the converter's output shape, about 2 s mp4s made here."""
    root = tmp_path_factory.mktemp("benchmarks")
    tokenizer = synthetic_tokenizer(WORDS + OPTIONS)
    cfg = get_config("tiny", stts=STTSConfig(method="stts", prune_ratio=0.5, layer=1))
    # a params-only Orbax export: each of two processes restores it onto its own first device (the sharding saved
    # with it names the device of the process that wrote it)
    export(cfg, chain_model(cfg, tokenizer), str(root / "model"), "orbax")
    tokenizer.save(str(root / "model" / "tokenizer.json"))  # read as data.tokenizer: the config names none
    data_root = root / "data"
    for name, (place, questions) in SETTINGS.items():
        manifest = data_root / place
        videos = manifest.parent / f"{name}_videos"
        videos.mkdir(parents=True)
        lines = []
        for i, (options, answer) in enumerate(questions):
            write_video(videos / f"v{i}.mp4", np.arange(8) / 4, size=(32, 32))  # 2 s: 4 frames at 2 fps
            line = {"id": f"{name}-q{i}", "video": f"{name}_videos/v{i}.mp4", "question": "what colour is the ball"}
            if options:
                line["options"] = OPTIONS[:options]
            else:
                line["question"] = "does it move"
            line |= {"answer": answer, "family": "yes_no" if options is None else "multi-choice"}
            line |= {"benchmark": name, "group": BENCHMARKS[name].group, "meta": {"index": i}}
            lines.append(json.dumps(line))
        manifest.write_text("\n".join(lines) + "\n")
    return root / "model", data_root


def evaluate_args(model, data_root, *flags) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stts_jax.evaluate",
        f"--checkpoint={model}",
        "--config=configs/manifest.py:variant=tiny,max_frames=4",
        "--config.data.mode=on_the_fly",
        f"--data_root={data_root}",
        *flags,
    ]


def device_env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def evaluate_command(model, data_root, *flags, devices: int = 1):
    args = evaluate_args(model, data_root, *flags)
    return subprocess.run(args, cwd=ROOT, env=device_env(devices), capture_output=True, text=True, timeout=600)


def table1_flags(out) -> list[str]:
    """Four settings (two short, two long, one of them yes/no in part) and one without a manifest (--skip_missing),
    pruned at another method and ratio than the model's, the JSON, Markdown and predictions written under `out`."""
    return [
        "--benchmarks=" + ",".join([*SETTINGS, "lvbench"]),
        "--skip_missing",
        "--method=random",
        "--prune_ratio=0.75",
        "--batch_size=2",
        f"--json={out / 't1.json'}",
        f"--markdown={out / 'md' / 't1.md'}",
        f"--predictions={out / 'samples.jsonl'}",
    ]


def check_table1(stdout: str, out) -> None:
    """The outputs of a run with table1_flags(out): the table's cells and averages equal hand computations from the
    predictions file, which equal the model's known answers."""
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    questions = {f"{name}-q{i}": name for name, (_, qs) in SETTINGS.items() for i in range(len(qs))}
    assert sorted(line["question_id"] for line in lines) == sorted(questions)  # one line per question
    for line in lines:
        assert line["task"] == questions[line["question_id"]] == line["doc"]["benchmark"]
        assert line["resps"] == [["answer is b"]] and line["filtered_resps"] == [line["prediction"]["generate"]]
        yes_no = "options" not in line["doc"]
        assert line["target"] == (line["doc"]["answer"] if yes_no else "ABCDE"[line["doc"]["answer"]])
        assert line["prediction"]["generate"] == (None if yes_no else "B")
        assert line["correct"] == {m: line["prediction"][m] == line["target"] for m in line["prediction"]}
        assert (line["frames"], line["vision_tokens"]) == (4, 36 - 27)  # 4 frames x 9 windows, k = 0.75
    modes = ("generate", "likelihood")
    by_hand = {
        name: {m: float(np.mean([line["correct"][m] for line in lines if line["task"] == name])) for m in modes}
        for name in SETTINGS
    }
    for name, (generate, likelihood) in EXPECTED.items():
        assert by_hand[name] == {"generate": pytest.approx(generate), "likelihood": pytest.approx(likelihood)}, name

    results = json.loads((out / "t1.json").read_text())
    table = results["table"]
    assert results["benchmarks"]["lvbench"] is None and table["settings"]["lvbench"] is None
    for mode in modes:
        for name in SETTINGS:
            assert table["settings"][name][mode] == pytest.approx(by_hand[name][mode])
        short = np.mean([by_hand["nextqa"][mode], by_hand["tempcompass"][mode]])
        long = np.mean([by_hand["videomme"][mode], by_hand["videomme_subtitles"][mode]])
        assert table["short"][mode] == pytest.approx(short) and table["long"][mode] == pytest.approx(long)
        assert table["overall"][mode] == pytest.approx((short + long) / 2)
        row = f"| random k=0.75, 4 frames, {mode} | " + " | ".join(
            [f"{100 * by_hand[n][mode]:.1f}" for n in SETTINGS]
            + ["-", f"{100 * short:.1f} (2/6)", f"{100 * long:.1f} (2/7)", f"{100 * (short + long) / 2:.1f} (4/13)"]
            + ["9"]
        )
        assert row + " |" in stdout and row + " |" in (out / "md" / "t1.md").read_text()
    assert results["benchmarks"]["tempcompass"]["unanswered"] == 3  # the yes/no questions, answered "answer is b"
    assert (results["method"], results["prune_ratio"], results["max_new_tokens"]) == ("random", 0.75, 16)


def test_table1_and_predictions_of_the_evaluate_command(benchmark_run, tmp_path):
    """One process, its rows split over 2 devices."""
    model, data_root = benchmark_run
    out = evaluate_command(model, data_root, *table1_flags(tmp_path), devices=2)
    assert out.returncode == 0, out.stderr[-3000:]
    check_table1(out.stdout, tmp_path)
    assert "no converted manifest for lvbench" in out.stderr


def test_published_formats_go_through_conversion_and_evaluation(benchmark_run, tmp_path):
    """The offline smoke path: annotation files in four published shapes (test_benchmarks_convert's: Parquet,
    JSON with yes/no answers, MVBench's JSON with clips, Parquet with .srt subtitles) converted by the converter,
    then evaluated by evaluate --benchmarks: every converted question is evaluated, under its benchmark's own id,
    against the answer the converter read, and nothing the converter wrote is skipped."""
    model, _ = benchmark_run
    clip = tmp_path / "clip.mp4"
    write_video(clip, np.arange(10.0), size=(32, 32), gop=5)
    data_root = tmp_path / "data"
    builders = {
        "nextqa": nextqa_parquet,
        "tempcompass": tempcompass_json,
        "mvbench": mvbench,
        "videomme_subtitles": videomme_subtitles,
    }
    converted = {}
    for name, build in builders.items():
        root = data_root / name
        root.mkdir(parents=True)
        annotations, videos, subtitles, expected, _ = build(root, clip)
        out = root / f"{name}.jsonl"
        convert(BENCHMARKS[name], str(annotations), str(videos), str(out), subtitles=subtitles and str(subtitles))
        converted[name] = expected
    predictions, results = tmp_path / "samples.jsonl", tmp_path / "t1.json"
    flags = [f"--predictions={predictions}", f"--json={results}"]
    out = evaluate_command(model, data_root, "--benchmarks=" + ",".join(builders), "--batch_size=2", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = map(json.loads, predictions.read_text().splitlines())
    lines = {(line["task"], line["question_id"]): line for line in rows}
    assert set(lines) == {(name, qid) for name, expected in converted.items() for qid in expected}
    for (name, qid), line in lines.items():
        options, answer, _ = converted[name][qid]
        assert line["target"] == ("ABCDE"[answer] if options else answer)
    figures = json.loads(results.read_text())["benchmarks"]
    for name, expected in converted.items():
        assert figures[name]["examples"] == len(expected) and not figures[name]["skipped"], name


@pytest.mark.slow  # 30-45 s on 2 busy cores: two start-ups, compiles for each process's shapes
def test_two_processes_evaluate_their_shares_and_write_one_table(benchmark_run, tmp_path):
    """Two processes joined with --coordinator, 2 devices each: each evaluates every other question, the
    predictions are gathered, process 0 writes the same files as one process does."""
    import socket

    model, data_root = benchmark_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = [
        subprocess.Popen(
            evaluate_args(
                model,
                data_root,
                *table1_flags(tmp_path),
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=ROOT,
            env=device_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=600) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    check_table1(outputs[0][0], tmp_path)
    assert "| run |" not in outputs[1][0]  # process 0 reports


def test_a_missing_manifest_stops_the_command_before_anything_is_evaluated(benchmark_run, tmp_path):
    model, data_root = benchmark_run
    out = evaluate_command(model, data_root, "--benchmarks=nextqa,mlvu", f"--json={tmp_path / 't1.json'}")
    assert out.returncode == 1
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: no converted manifest for mlvu under {data_root} (looked for {data_root}/mlvu/")
    assert f"python -m stts_jax.benchmarks.convert mlvu --annotations=... --videos=... --out={data_root}/mlvu/" in error
    assert "--skip_missing" in error and not (tmp_path / "t1.json").exists()
    out = evaluate_command(model, data_root, "--benchmarks=nextqa,video_mme")
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
        "error: --benchmarks=nextqa,video_mme: unknown video_mme; name settings of Table 1"
    )
