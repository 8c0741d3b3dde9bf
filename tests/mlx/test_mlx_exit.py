"""Processes that used the MLX worker exit cleanly, every time.

MLX work on a thread that ends without ``mx.clear_streams()`` made about half of such
processes abort at exit ("terminate called without an active exception", status 134).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("_exit_probe.py")
RUNS = 20


@pytest.mark.timeout(240)
def test_twenty_processes_exit_with_status_zero(tiny_model: str, model_cache: Path) -> None:
    env = {**os.environ, "ADK_CANCEL_MODEL_CACHE": str(model_cache)}

    def run(i: int) -> subprocess.CompletedProcess[str]:
        mode = "atexit" if i % 2 else "explicit"
        return subprocess.run(
            [sys.executable, str(PROBE), mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, range(RUNS)))
    failures = [
        f"run {i}: status {r.returncode}\n{r.stderr[-2000:]}"
        for i, r in enumerate(results)
        if r.returncode != 0 or "probe done" not in r.stdout or "terminate called" in r.stderr
    ]
    assert not failures, "\n\n".join(failures)
