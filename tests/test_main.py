"""End-to-end runs of the CLI and the stage runner on tiny synthetic configs."""

import json
import os
import subprocess
import sys

import pytest

from configs import sasrec
from gr_jax import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr"}


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "gr_jax.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_sasrec_tiny_pipeline_writes_metrics_and_summaries(tmp_path):
    config = sasrec.get_config("tiny")
    stages.run(config, str(tmp_path))
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert list(metrics) == ["valid", "valid/head", "valid/tail", "test", "test/head", "test/tail"]
    for split in metrics.values():
        assert METRICS <= set(split)
        assert 0.0 <= split["ndcg@10"] <= split["recall@10"] <= 1.0
        assert split["recall@5"] <= split["recall@10"]
    for split in ("valid", "test"):
        assert metrics[split]["num_users"] == 150
        head, tail = metrics[f"{split}/head"], metrics[f"{split}/tail"]
        assert head["num_users"] + tail["num_users"] == 150
        weighted = (head["recall@10"] * head["num_users"] + tail["recall@10"] * tail["num_users"]) / 150
        assert weighted == pytest.approx(metrics[split]["recall@10"])
    for stage in ("data", "train", "eval"):
        assert (tmp_path / stage / "summary.json").exists()
    train = json.load(open(tmp_path / "train" / "summary.json"))
    assert train["final_step"] == train["total_steps"] > 0
    lines = (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
    assert any("valid/ndcg@10" in json.loads(line) for line in lines)


def test_eval_stage_alone_restores_the_trained_checkpoint(tmp_path):
    config = sasrec.get_config("tiny")
    stages.run(config, str(tmp_path))
    first = json.load(open(tmp_path / "eval" / "metrics.json"))
    config = sasrec.get_config("tiny")
    config.stages = "eval"
    stages.run(config, str(tmp_path))
    assert json.load(open(tmp_path / "eval" / "metrics.json")) == first


def test_cli_runs_a_baseline_and_prints_the_table(tmp_path):
    result = run_cli("--config=configs/cooccurrence.py:tiny", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ndcg@10" in result.stdout and "test" in result.stdout
    assert json.load(open(tmp_path / "eval" / "metrics.json"))["test"]["num_users"] == 150


def test_cli_config_typo_fails_and_names_valid_fields(tmp_path):
    result = run_cli("--config=configs/popularity.py:tiny", "--config.train.batch_sise=8", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert "batch_sise" in result.stderr and "batch_size" in result.stderr


def test_cli_unknown_data_dir_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    result = run_cli("--config=configs/popularity.py", "--config.data.format=lcrec", f"--config.data.dir={empty}",
                     f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "inter.json" in result.stderr and "notes.txt" in result.stderr


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="unknown stage"):
        stages.parse_stages("data,trian")


def test_a_stage_the_system_has_no_section_for_is_rejected_naming_its_stages():
    from configs import sasrec

    with pytest.raises(ValueError, match="sasrec has no 'features' section.*its stages: data,train,eval"):
        stages.parse_stages("data,features,train", sasrec.get_config("tiny"))
