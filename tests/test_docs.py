"""The README quick start is what CI runs."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start_lines():
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_has_two_commands_and_ci_runs_the_second():
    lines = quick_start_lines()
    assert len(lines) == 2
    assert "gr_jax.main" in lines[0] and "pytest" in lines[1]
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert lines[1].strip() in ci
