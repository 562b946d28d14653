"""benchmarks/bench.py --quick runs and prints its table (a smoke test: no timing is asserted)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench.py"), "--quick", "--no-torch",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "MLP train step, batch 25" in result.stdout and "matmul peak" in result.stdout
    rows = json.loads(out.read_text())["results"]
    assert {r["impl"] for r in rows} >= {"numpy"}
    assert all(r["per_second"] > 0 and r["gflops"] > 0 for r in rows)
