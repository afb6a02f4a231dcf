"""A user of eggroll-trainer 0.1.0 can run its documented quickstart unchanged."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_old_readme_quickstart_runs_unchanged():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(HERE / "compat" / "old_readme_quickstart.py")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "100/100" in result.stderr  # the progress bar reached the end
