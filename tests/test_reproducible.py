"""Same seed, same flags, same machine and BLAS kernel: bitwise the same weights and samples,
whatever the machine's load (the BLAS tuner's choices) and across an interrupted and resumed
run. Checked under every OpenBLAS kernel this CPU can execute, each in a subprocess with
OPENBLAS_CORETYPE set there alone (tests/reproducible_run.py), so the rest of the suite keeps
the machine's own kernel."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# OpenBLAS kernel -> the CPU flags (Linux /proc/cpuinfo names) its code needs
KERNELS = {"Haswell": {"avx2", "fma"}, "Zen": {"avx2", "fma"},
           "SkylakeX": {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as file:
            return next((set(line.split(":", 1)[1].split()) for line in file if line.startswith("flags")), set())
    except OSError:
        return set()


def runnable_kernels():
    """None (the machine's own choice), then each kernel whose instructions this CPU has."""
    flags = cpu_flags()
    return [None] + [name for name, needs in KERNELS.items() if needs <= flags]


@pytest.mark.parametrize("coretype", runnable_kernels(), ids=lambda k: k or "default")
def test_same_bits_whatever_the_load_and_across_a_resume(coretype, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")} \
        if coretype else dict(os.environ)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    result = subprocess.run([sys.executable, os.path.join(HERE, "reproducible_run.py"), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if coretype in ("Haswell", "SkylakeX"):
        assert report["architecture"] == [coretype], report
    weights, samples = report["weights"], report["samples"]
    assert len(weights) == 4 and len(set(weights.values())) == 1, report
    assert len(samples) == 2 and len(set(samples.values())) == 1, report
    for tuner in report["tuners"].values():          # it switches only where its check found equal bits
        assert tuner["active"] or "differently" in tuner["reason"], report
