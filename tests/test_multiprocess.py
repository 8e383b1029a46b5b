"""The multi-host path run for real on one machine: 2 OS processes x 4 CPU devices, joined by
jax.distributed (coordinator on 127.0.0.1, gloo CPU collectives), train 5 pretraining steps of a
tiny model on real pipeline data over the 8-device (data 4 x fsdp 2) mesh, in one shared workdir
(checkpoints from both processes through orbax), and must match the same 5 steps run by ONE
process with 8 devices. Each process must read only its own rows of every global batch.

A third 2-process run is SIGKILLed after its step-2 checkpoint and relaunched: it must resume
there and still match.

Every run is a subprocess (tests/multiprocess_child.py) with a timeout; the pair is killed as
soon as one of them fails.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt_jax import paths
from gpt_jax.metrics import read_metrics
from gpt_jax.tokenizer import train_bpe

REPO = Path(__file__).resolve().parent.parent
CHILD = REPO / "tests" / "multiprocess_child.py"
TIMEOUT_S = 420
B = 16  # multiprocess_child.BATCH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(port: int) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the child sets its own device count
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"  # listen on loopback only
    return env


def _launch(args: list[dict], port: int, logs: Path, tag: str = "",
            expect_rc: int = 0) -> list[dict]:
    """Runs the children concurrently; kills all of them when one fails or time runs out."""
    procs = []
    for a in args:
        log = open(logs / f"child{a['process_id']}_of{a['num_processes']}{tag}.log", "w")
        procs.append((subprocess.Popen([sys.executable, str(CHILD), json.dumps(a)], cwd=REPO,
                                       env=_env(port), stdout=log, stderr=subprocess.STDOUT),
                      log))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p, _ in procs):
            failed = [p for p, _ in procs if p.poll() not in (None, expect_rc)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            log.close()
    bad = [(a, p.returncode) for a, (p, _) in zip(args, procs) if p.returncode != expect_rc]
    if bad:
        tails = "\n".join(
            f"--- process {a['process_id']} rc={rc}:\n" + "\n".join(
                l for l in (logs / f"child{a['process_id']}_of{a['num_processes']}{tag}.log")
                .read_text().splitlines() if "SPMD" not in l)[-3000:]
            for a, rc in bad)
        pytest.fail(f"child process(es) failed or timed out ({TIMEOUT_S}s):\n{tails}")
    if expect_rc:
        return []
    return [json.loads(Path(a["out"]).read_text()) for a in args]


pytestmark = pytest.mark.slow  # 3-4 min on 2 cores: seven jax processes, each compiling the step


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    text = (paths.resolve_data_dir() / "pretrain/tinyshakespeare/input.txt").read_text()[:50_000]
    tok = train_bpe([text[i: i + 2000] for i in range(0, len(text), 2000)], vocab_size=384)
    for name in ("single", "multi"):
        (root / name / "tokenizer").mkdir(parents=True)
        tok.save(root / name / "tokenizer" / "tokenizer.json")
    t0 = time.perf_counter()
    port = _free_port()
    multi = _launch([{"devices": 4, "num_processes": 2, "process_id": i, "port": port,
                      "workdir": str(root / "multi"), "out": str(root / f"multi{i}.json")}
                     for i in range(2)], port, root)
    t1 = time.perf_counter()
    single = _launch([{"devices": 8, "num_processes": 1, "process_id": 0, "port": 0,
                       "workdir": str(root / "single"), "out": str(root / "single.json")}],
                     _free_port(), root)[0]
    t2 = time.perf_counter()
    print(f"\n2 processes x 4 devices: {t1 - t0:.1f}s; 1 process x 8 devices: {t2 - t1:.1f}s")
    return root, single, multi, tok


def _losses(record) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in record["metrics"] if "loss" in m}


def test_losses_match_single_process(runs):
    _, single, multi, _ = runs
    assert [m["process_count"] for m in multi] == [2, 2] and single["process_count"] == 1
    ref = _losses(single)
    assert sorted(ref) == [1, 2, 3, 4, 5]
    for record in multi:
        got = _losses(record)
        assert sorted(got) == sorted(ref)
        diff = max(abs(got[s] - ref[s]) for s in ref)
        print(f"process {record['process_index']}: max |loss diff| over 5 steps = {diff:.3g}")
        assert diff <= 1e-5, (got, ref)
        eval_got = record["summary"]["final_eval_loss"]
        assert abs(eval_got - single["summary"]["final_eval_loss"]) <= 1e-5
    assert _losses(multi[0]) == _losses(multi[1])  # every process holds the same global loss
    # tokens per source count the whole global batch in every process, not its own rows
    for record in multi:
        assert record["summary"]["tokens_by_source"] == single["summary"]["tokens_by_source"]


def test_each_process_reads_only_its_rows(runs):
    _, single, multi, _ = runs
    half = B // 2
    for split, steps in (("train", range(5)), ("heldout", range(2))):
        ref = {r["step"]: r for r in single["reads"] if r["split"] == split}
        assert sorted(ref) == list(steps)
        for step in steps:
            mine = [next(r for r in m["reads"] if r["split"] == split and r["step"] == step)
                    for m in multi]
            # process p reads global rows [p*B/2, (p+1)*B/2) of batch `step`, nothing else
            for p, r in enumerate(mine):
                assert r["rows"] == list(range(step * B + p * half, step * B + (p + 1) * half))
                assert len(r["tokens"]) == half
            assert not set(mine[0]["rows"]) & set(mine[1]["rows"])
            assert mine[0]["rows"] + mine[1]["rows"] == ref[step]["rows"]
            # ... and together they are exactly the one-process global batch, in order
            np.testing.assert_array_equal(mine[0]["tokens"] + mine[1]["tokens"],
                                          ref[step]["tokens"])
    for p, m in enumerate(multi):  # the rows a process read land on its own devices
        assert m["shard_rows"] == list(range(p * half, (p + 1) * half))
        assert len([r for r in m["reads"] if r["split"] == "train"]) == 5


def test_run_files_written_once(runs):
    root, single, _, _ = runs
    stage = root / "multi" / "pretrain"
    rows = read_metrics(stage / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]  # not once per process
    assert [r["step"] for r in rows if "eval_loss" in r] == [5]
    summary = json.loads((stage / "summary.json").read_text())
    assert abs(summary["final_train_loss"] - _losses(single)[5]) <= 1e-5
    # orbax checkpoints written by both processes: steps 4 and 5 kept (max_to_keep=2), complete
    ckpts = sorted(int(p.name) for p in (stage / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [4, 5]
    assert not [p for p in (stage / "checkpoints").iterdir() if "tmp" in p.name]
    saved = json.loads((stage / "config.json").read_text())
    assert saved["distributed"]["process_id"] == 0 and saved["distributed"]["num_processes"] == 2


def test_killed_run_resumes_from_its_checkpoint(runs):
    """Both processes are SIGKILLed right after the step-2 checkpoint (train.kill_at_step); the
    same 2-process command again restores it (orbax, sharded over both processes) and steps 3-5
    match the uninterrupted one-process run."""
    root, single, _, tok = runs
    workdir = root / "resumed"
    (workdir / "tokenizer").mkdir(parents=True)
    tok.save(workdir / "tokenizer" / "tokenizer.json")

    def args(port, **extra):
        return [{"devices": 4, "num_processes": 2, "process_id": i, "port": port,
                 "workdir": str(workdir), "out": str(root / f"resumed{i}.json"), **extra}
                for i in range(2)]

    port = _free_port()
    _launch(args(port, kill_at_step=2), port, root, tag="_killed", expect_rc=-9)
    ckpts = workdir / "pretrain" / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [2]
    port = _free_port()  # a new coordinator: distributed.coordinator_address is not compared
    resumed = _launch(args(port), port, root, tag="_resumed")
    ref = _losses(single)
    for record in resumed:
        got = _losses(record)
        assert sorted(got) == [3, 4, 5]  # restored at step 2, not started over
        diff = max(abs(got[s] - ref[s]) for s in got)
        print(f"resumed process {record['process_index']}: max |loss diff| steps 3-5 = {diff:.3g}")
        assert diff <= 1e-5, (got, ref)
        train_reads = sorted(r["step"] for r in record["reads"] if r["split"] == "train")
        assert train_reads == [2, 3, 4]  # the data iterator resumed at batch 2
    rows = read_metrics(workdir / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]
    assert resumed[0]["summary"]["tokens_by_source"] == single["summary"]["tokens_by_source"]
