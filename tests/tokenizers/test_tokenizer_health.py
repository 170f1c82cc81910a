"""Tests for the codebook health report, its checks and its files."""

import json

import numpy as np
import pytest

from gr_jax.tokenizers.health import (
    CodebookHealthError,
    HealthThresholds,
    check_health,
    compute_health,
    format_health,
    write_health,
)


def _healthy():
    codes = np.random.default_rng(0).integers(0, 64, size=(1000, 3))
    return compute_health(codes, 64, residual_energy=[1.0, 0.5, 0.3, 0.2], recon_error=0.2)


def test_healthy_codes_pass():
    report = _healthy()
    assert all(lv.usage > 0.9 for lv in report.levels)
    assert [lv.energy_ratio for lv in report.levels] == pytest.approx([0.5, 0.6, 2 / 3])
    assert report.collision_rate < 0.02
    check_health(report)
    assert "collision rate" in format_health(report)


def test_collapsed_codebook_fails_naming_usage():
    codes = np.zeros((100, 2), np.int32)
    codes[:, 1] = np.arange(100) % 16
    report = compute_health(codes, 16)
    assert report.levels[0].used == 1 and report.levels[0].perplexity == pytest.approx(1.0)
    assert report.levels[1].perplexity == pytest.approx(16.0, rel=0.01)
    assert report.collision_rate == 1.0 and report.num_unique_sids == 16
    with pytest.raises(CodebookHealthError) as info:
        check_health(report)
    message = str(info.value)
    assert "level 0 usage = 0.0625 (limit min_usage = 0.9)" in message and "balanced" in message
    assert "level 0 perplexity_fraction = 0.0625 (limit min_perplexity_fraction = 0.1)" in message
    assert "level 1" not in message
    assert "collision_rate = 1" in message and "dedup digit" in message
    check_health(report, HealthThresholds(min_usage=None, min_perplexity_fraction=None, max_collision_rate=None))


def test_hub_collapse_and_energy_checks():
    codes = np.random.default_rng(0).integers(0, 32, size=(1000, 2))
    codes[:, 1] = np.where(np.arange(1000) < 904, 0, np.arange(1000) % 32)  # a hub, yet every code used
    report = compute_health(codes, 32, residual_energy=[1.0, 0.5, 0.45])
    hub = report.levels[1]
    assert hub.usage == 1.0 and hub.count_skewness > 5 and hub.max_code_share > 0.9
    with pytest.raises(CodebookHealthError) as info:
        check_health(report, HealthThresholds(max_count_cv=1.0))
    message = str(info.value)
    assert "level 1 perplexity_fraction" in message and "level 1 count_cv" in message
    assert "level 1 energy_ratio = 0.9 (limit max_energy_ratio = 0.8)" in message and "num_iters" in message
    assert "level 0" not in message


def test_write_health_files(tmp_path):
    json_path, png_path = write_health(_healthy(), str(tmp_path / "health"))
    with open(json_path) as f:
        data = json.load(f)
    assert len(data["levels"]) == 3 and len(data["levels"][0]["counts"]) == 64
    with open(png_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_codes_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="codebook_size"):
        compute_health(np.array([[0, 9]]), (4, 4))
