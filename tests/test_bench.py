"""The benchmark still runs and its contenders still agree."""

import subprocess
import sys

from conftest import REPO


def test_bench_smoke(tmp_path):
    command = [sys.executable, str(REPO / "bench" / "bench.py"), "--sizes", "3000", "--latency-ms", "0",
               "--original-max", "3000", "--repeat", "1", "--data-dir", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "files identical: yes" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("3000")]
    assert [row[1] for row in rows] == ["export", "floor", "original", "client", "clientfloor"]
    queries = {row[1]: int(row[-1]) for row in rows}
    assert queries["export"] == queries["floor"] == queries["client"] == 1 and queries["original"] > 2000
