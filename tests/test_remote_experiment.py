"""A whole tiny experiment with its data and workdir on gs:// (conftest's GCS emulator on 127.0.0.1): the
synthetic set built into the bucket; `python -m stts_jax.train` killed with SIGKILL once a checkpoint is in the
bucket, then resumed, equal bitwise to an uninterrupted local run; the run evaluated, exported to gs:// and the
export loaded and evaluated to the run's results. Every process reads the data from the bucket (each with its
own empty local mirror)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from http import HTTPStatus

import numpy as np
import pytest
from conftest import ROOT, synthetic_config
from test_resume_reference import command, flat, stored_state, without_timing
from test_train_loop import overrides

from stts_jax.data.sources import split_source
from stts_jax.export.formats import export_run, load_export
from stts_jax.storage import CACHE_ENV

STEPS, EVERY = 12, 3
ROOT_URL = "gs://bucket/remote_experiment"
DATA, RUN = f"{ROOT_URL}/data", f"{ROOT_URL}/run"
CONFIG = overrides(DATA, STEPS, EVERY)  # conftest.synthetic_config's sizes


@pytest.fixture(scope="module")
def bucket(gcs):
    """conftest's emulator, made whole for Orbax: tensorstore (Orbax's storage layer, which does not read
    STORAGE_EMULATOR_HOST) pointed at it without credentials, and object downloads answered with the
    x-goog-generation header as GCS answers them (the emulator leaves it out, and tensorstore's conditional
    reads of a checkpoint's manifest then fail with "Malformed StorageGeneration")."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        original(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            stored = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = stored["generation"]
            response["x-goog-metageneration"] = stored["metageneration"]

    routes = [handlers for _, handlers in server.HANDLERS for handler in handlers.values() if handler is original]
    env = {"TENSORSTORE_GCS_HTTP_URL": os.environ["STORAGE_EMULATOR_HOST"], "GOOGLE_AUTH_TOKEN_FOR_TESTING": "none"}
    before = {name: os.environ.get(name) for name in env}
    objects.download = download  # objects.get calls it for ?alt=media
    for handlers in routes:
        handlers.update({method: download for method, handler in handlers.items() if handler is original})
    os.environ.update(env)
    yield gcs
    objects.download = original
    for handlers in routes:
        handlers.update({method: original for method, handler in handlers.items() if handler is download})
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def start(args: list[str], log: str, cache: str, data_cache: str) -> subprocess.Popen:
    """A command in a subprocess, its output in the file `log`; `cache`: JAX's persistent compilation cache
    (a hit runs the executable XLA compiled for the same program: faster, the same numbers); `data_cache`:
    its own empty mirror of the bucket's datasets, so what it reads comes from the bucket."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", CACHE_ENV: data_cache}
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    with open(log, "w") as out:
        return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def finish(process: subprocess.Popen, log: str, timeout: float = 900) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with open(log) as f:
        output = f.read()
    assert process.returncode == 0, output[-3000:]
    return output


def committed_steps(gcs, workdir: str) -> list[int]:
    """The checkpoints Orbax finished in a gs:// workdir (on an object store a step is done when its
    commit_success.txt is there)."""
    gcs.invalidate_cache()
    return sorted(int(path.split("/")[-2]) for path in gcs.glob(f"{workdir}/checkpoints/*/commit_success.txt"))


def remote_metrics(gcs, workdir: str) -> list[dict]:
    gcs.invalidate_cache()
    return [json.loads(line) for line in gcs.cat(f"{workdir}/metrics.jsonl").decode().splitlines() if line]


def local_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow  # about 3.5 min on 2 busy cores: 3 trainings, 2 evaluations and an export, each a process
def test_build_train_kill_resume_evaluate_and_export_on_gcs(bucket, tmp_path, monkeypatch):
    gcs = bucket
    cache = str(tmp_path / "compilation_cache")
    logs = lambda name: str(tmp_path / f"{name}.log")
    mirror = lambda name: str(tmp_path / "data_mirrors" / name)
    run = lambda name, args: finish(start(args, logs(name), cache, mirror(name)), logs(name))

    # the dataset, built straight into the bucket (what `python -m stts_jax.data.build` calls, in this process)
    monkeypatch.setenv(CACHE_ENV, mirror("build"))
    split_source(synthetic_config(DATA, STEPS, EVERY), "train")
    gcs.invalidate_cache()
    built = gcs.glob(f"{DATA}/synthetic_video_qa/*/*/*")
    splits = {path.split("-")[1].split(".")[0] for path in built if ".array_record-" in path}
    assert splits == {"train", "validation", "test"} and any(path.endswith("/dataset_info.json") for path in built)

    # training on gs://, killed once a checkpoint is in the bucket, resumed; an uninterrupted local run beside
    # the resumed one (both reuse the first run's compiled step)
    train = command(DATA, RUN, STEPS, EVERY)
    reference_dir = tmp_path / "reference"
    process = start(train, logs("killed"), cache, mirror("killed"))
    reference = None
    try:
        deadline = time.time() + 600
        while not committed_steps(gcs, RUN):
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                process.wait()
                with open(logs("killed")) as f:
                    pytest.fail("no checkpoint in the bucket before the run ended or timed out:\n" + f.read()[-3000:])
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = committed_steps(gcs, RUN)
        assert saved and saved[-1] < STEPS, f"the run was not stopped before its end: {saved}"
        reference = start(command(DATA, reference_dir, STEPS, EVERY), logs("reference"), cache, mirror("reference"))
        output = run("resumed", train)
        assert f"resumed from step {saved[-1]} in {RUN}" in output, output[-3000:]
        finish(reference, logs("reference"))
    finally:
        for p in (reference, process):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    lines, reference_lines = remote_metrics(gcs, RUN), local_metrics(reference_dir)
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))  # no step lost or repeated
    # the first step of each start logs its compile: rows up to the checkpoint are the killed run's, kept
    assert [line["step"] for line in lines if "train/compile_seconds" in line] == [1, saved[-1] + 1]
    for line, ref in zip(lines, reference_lines, strict=True):
        assert without_timing(line) == without_timing(ref), f"step {line['step']} differs from the uninterrupted run"
    step, state = stored_state(RUN)
    ref_step, ref_state = stored_state(reference_dir)
    assert step == ref_step == int(state["step"]) == STEPS
    ours, theirs = flat(state, "state"), flat(ref_state, "state")
    assert ours.keys() == theirs.keys() and any("opt_state" in k for k in ours)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)  # params, optimizer, rng: bitwise on CPU
    copied = [name for _, _, names in os.walk(mirror("resumed")) for name in names]  # its mirror started empty
    assert "dataset_info.json" in copied and any(".array_record-" in name for name in copied)

    # the run evaluated from the bucket, exported into it, the export evaluated from it: the same results
    evaluate = [sys.executable, "-m", "stts_jax.evaluate", "--split=test"]
    run("eval", [*evaluate, f"--checkpoint={RUN}", f"--json={ROOT_URL}/eval/run.json"])
    export = [sys.executable, "-m", "stts_jax.export", f"--workdir={RUN}", "--format=hf", f"--out={ROOT_URL}/hf"]
    assert f"exported step {STEPS} of {RUN} as hf" in run("export", export)
    run("eval_hf", [*evaluate, f"--checkpoint={ROOT_URL}/hf", *CONFIG, f"--json={ROOT_URL}/eval/hf.json"])
    results = {name: json.loads(gcs.cat(f"{ROOT_URL}/eval/{name}.json")) for name in ("run", "hf")}
    assert results["run"]["examples"] == 8 and results["run"]["checkpoint"] == f"{RUN} step {STEPS}"
    assert {k: v for k, v in results["hf"].items() if k != "checkpoint"} == {
        k: v for k, v in results["run"].items() if k != "checkpoint"
    }

    # both export formats load from the bucket with the run's parameters, bitwise
    export_run(RUN, f"{ROOT_URL}/orbax", "orbax")
    trained = flat(state["params"], "params")
    for fmt in ("hf", "orbax"):
        _, params = load_export(f"{ROOT_URL}/{fmt}")
        loaded = flat(params, "params")
        assert loaded.keys() == trained.keys() and any(k.startswith("params['scorer']") for k in loaded), fmt
        for name, value in trained.items():
            np.testing.assert_array_equal(loaded[name], value, err_msg=f"{fmt}: {name}")
