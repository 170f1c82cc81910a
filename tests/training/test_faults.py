"""Runs that survive faults, with real processes: SIGTERM checkpoints and resumes with the batches
an uninterrupted run sees, SIGKILL and half-written checkpoints, a corrupted newest checkpoint,
a workdir in use, bad input without tracebacks and a run record that a failed command leaves alone."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, XLA_FLAGS="")
STEPS = 600


def cli(workdir, *extra, config="configs/sasrec.py:tiny"):
    return [sys.executable, "-m", "gr_jax.main", f"--config={config}", f"--workdir={workdir}",
            f"--config.train.num_steps={STEPS}", "--config.train.log_every_steps=1",
            "--config.train.checkpoint_every_steps=100", "--config.train.eval_every_epochs=100",
            "--config.mesh.data=1", *extra]


def run(args, **kwargs):
    return subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, **kwargs)


def losses(workdir):
    out = {}
    for line in open(os.path.join(workdir, "train", "metrics.jsonl")):
        if not line.endswith("\n"):  # the run is writing this line now: read it next time
            break
        record = json.loads(line)
        if "train/loss" in record:
            out[record["step"]] = record["train/loss"]
    return out


def logged_step(workdir) -> int:
    path = os.path.join(workdir, "train", "metrics.jsonl")
    return max(losses(workdir), default=0) if os.path.exists(path) else 0


def checkpoint_steps(workdir) -> list[int]:
    latest = os.path.join(workdir, "train", "checkpoints", "latest")
    return sorted(int(p) for p in os.listdir(latest) if p.isdigit()) if os.path.isdir(latest) else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run(cli(workdir))
    assert result.returncode == 0, result.stderr[-2000:]
    return losses(workdir)


def start_and_signal(workdir, signum, after_step: int) -> subprocess.Popen:
    process = subprocess.Popen(cli(workdir), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while time.time() < deadline and logged_step(workdir) < after_step and process.poll() is None:
        time.sleep(0.1)
    assert process.poll() is None, "the run finished before the signal"
    process.send_signal(signum)
    process.wait(timeout=300)
    return process


def assert_resumes(workdir, reference, from_step: int):
    rerun = run(cli(workdir))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"Resumed from step {from_step}" in rerun.stderr  # it continued, it did not start over
    got = losses(workdir)
    after = range(from_step + 1, STEPS + 1)
    np.testing.assert_allclose([got[s] for s in after], [reference[s] for s in after], rtol=1e-5)
    return rerun


def test_sigterm_checkpoints_at_the_next_step_and_the_rerun_resumes_exactly(tmp_path, reference):
    process = start_and_signal(tmp_path, signal.SIGTERM, after_step=150)
    assert process.returncode == 128 + signal.SIGTERM
    message = process.stderr.read()
    stopped = int(message.split("at step ")[1].split(";")[0])
    assert "checkpoint is saved: run the same command to resume" in message
    assert 150 <= stopped < STEPS and checkpoint_steps(tmp_path)[-1] == stopped  # saved where it stopped
    assert not (tmp_path / ".lock").exists()  # released
    record = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
    assert [r["event"] for r in record] == ["start", "end"] and record[-1]["status"] == "preempted"
    assert_resumes(tmp_path, reference, stopped)


def test_sigkill_and_a_half_written_checkpoint_resume_from_the_last_finished_one(tmp_path, reference):
    start_and_signal(tmp_path, signal.SIGKILL, after_step=250)
    finished = checkpoint_steps(tmp_path)[-1]
    latest = tmp_path / "train" / "checkpoints" / "latest"
    half = latest / f"{finished + 100}.orbax-checkpoint-tmp-1234"  # what a kill during a write leaves
    shutil.copytree(latest / str(finished), half)
    (tmp_path / ".lock").write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename}))  # a dead holder
    rerun = assert_resumes(tmp_path, reference, finished)
    assert not half.exists() and "half-written" in rerun.stderr and "stale lock" in rerun.stderr


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one_naming_it(tmp_path, reference):
    start_and_signal(tmp_path, signal.SIGTERM, after_step=250)
    steps = checkpoint_steps(tmp_path)
    newest = tmp_path / "train" / "checkpoints" / "latest" / str(steps[-1])
    for path in (newest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    rerun = assert_resumes(tmp_path, reference, steps[-2])
    assert f"Checkpoint {newest} (step {steps[-1]}) does not restore" in rerun.stderr


def test_a_second_run_on_a_workdir_in_use_stops_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                    "started": "2026-11-30 10:00:00", "argv": ["the", "other", "run"]}))
        result = run(cli(tmp_path, config="configs/popularity.py:tiny"))
    finally:
        holder.kill()
    assert result.returncode == 2
    assert f"is in use by process {holder.pid}" in result.stderr and "the other run" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()


def test_bad_input_is_one_line_and_a_failed_command_leaves_the_run_record(tmp_path):
    done = run(cli(tmp_path, config="configs/popularity.py:tiny"))
    assert done.returncode == 0, done.stderr[-2000:]
    record, trained = (tmp_path / "runs.jsonl").read_text(), (tmp_path / "train" / "config.json").read_text()
    failures = {"--config.stages=data,trian": "unknown stage(s) ['trian']",
                "--config.train.learning_rate=-0.001": "train.learning_rate=-0.001; it must be at least 0.0",
                "--config.train.batch_sise=8": "config.train has no field 'batch_sise'; did you mean batch_size?"}
    for flag, message in failures.items():
        result = run(cli(tmp_path, flag, config="configs/popularity.py:tiny"))
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    assert (tmp_path / "runs.jsonl").read_text() == record  # rejected before anything was written
    assert (tmp_path / "train" / "config.json").read_text() == trained
    verbose = run(cli(tmp_path, "--config.stages=data,trian", "--verbose", config="configs/popularity.py:tiny"))
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
