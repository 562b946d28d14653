import ast
import pathlib

import pytest

from numpy_ddpm import backend, cpu

from conftest import CUPY_SKIP

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "numpy_ddpm"


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_only_backend_imports_numpy_or_cupy():
    offenders = {}
    for path in PACKAGE.glob("*.py"):
        if path.name == "backend.py":
            continue
        bad = {m for m in imported_modules(path)} & {"numpy", "cupy", "torch"}
        if bad:
            offenders[path.name] = bad
    assert not offenders, offenders
    assert "numpy" in set(imported_modules(PACKAGE / "backend.py"))


@pytest.mark.skipif(CUPY_SKIP is None, reason="cupy and a GPU are present here")
def test_cupy_without_gpu_is_one_clear_error():
    with pytest.raises(backend.BackendError) as info:
        backend.use("cupy")
    message = str(info.value)
    assert "\n" not in message and ("cupy" in message.lower() or "cuda" in message.lower())
    assert backend.name == "numpy" and backend.xp.__name__ == "numpy"


def test_unknown_backend():
    with pytest.raises(backend.BackendError, match="choose 'numpy' or 'cupy'"):
        backend.use("tpu")


def test_precision_context():
    assert backend.dtype.__name__ == "float32"
    with backend.precision("float64"):
        assert backend.dtype.__name__ == "float64"
    assert backend.dtype.__name__ == "float32"


DEVICE_PATH = ["nn/module.py", "nn/layers.py", "nn/conv.py", "nn/losses.py", "nn/im2col.py", "nn/winograd.py",
               "nn/optim.py", "models/conditioning.py", "models/lecture.py", "diffusion/schedule.py",
               "diffusion/training.py", "diffusion/sampling.py", "diffusion/ddim.py", "diffusion/dpm_solver.py",
               "app/train.py"]


def test_device_path_never_touches_host_numpy():
    """The modules that training and sampling run through use only `backend.xp` (numpy or
    cupy) and backend helpers: a host numpy call there (backend.np.asarray of a device array,
    say) would fail or sync on cupy. The strict stand-in (test_strict.py) checks them at run
    time; this reads their source."""
    for name in DEVICE_PATH:
        source = (PACKAGE / name).read_text()
        assert "backend.np" not in source, name



FAULTS = """
import resource, sys
import numpy as np
from numpy_ddpm import backend
from numpy_ddpm.diffusion import train_step, generate
from numpy_ddpm.models import convnet, mlp
from numpy_ddpm.optim import EMA, Adam
from numpy_ddpm.schedule import Schedule
conv = sys.argv[1] == "conv"
model, schedule, rng = (convnet(1) if conv else mlp(2)), Schedule(), backend.default_rng(0)
optimizer, ema = Adam(model.flat_parameters()), EMA(model.flat_parameters())
x0 = np.random.default_rng(0).standard_normal((25, 1, 8, 8) if conv else (1000, 2)).astype(np.float32)
step = (lambda: train_step(model, optimizer, x0, schedule, rng, ema)) if conv else \
    (lambda: generate(model.train(False), x0.shape, schedule, rng, progress=lambda steps: steps[:5]))
for k in range(13):
    if k == 3:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
print(backend.reuse_freed_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_call(workload, reuse):
    """Page faults per call in a fresh process that imports numpy_ddpm, with or without the
    allocator setting that the import makes (NUMPY_DDPM_REUSE_MEMORY=0 turns it off)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, cpu.REUSE_MEMORY_VARIABLE: "1" if reuse else "0"}
    result = subprocess.run([sys.executable, "-c", FAULTS, workload], capture_output=True, text=True,
                            check=True, env=env)
    applied, per_call = result.stdout.split()
    if applied != "True":
        pytest.skip("not glibc: no mallopt")
    return float(per_call)


def test_the_conv_layers_keep_their_work_arrays_and_fault_no_pages():
    """The lecture's conv net trains (Winograd, its default here) without fresh pages at each
    step even with the allocator left alone: its tiles and weight transforms live in buffers
    kept from step to step (it faulted 18,853 pages a step before they did)."""
    assert faults_per_call("conv", reuse=False) < 20


def test_importing_the_package_lets_the_allocator_reuse_freed_blocks():
    """The MLP's sampling at 1000 points makes fresh 1 MB temporaries every step: glibc maps them
    afresh unless the import's setting (reuse_freed_memory) keeps them."""
    untouched, reused = faults_per_call("mlp", reuse=False), faults_per_call("mlp", reuse=True)
    assert untouched > 100 and reused < 0.1 * untouched, (untouched, reused)


def blas_count():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController().select(user_api="blas").lib_controllers[0].num_threads


def test_blas_tuner_keeps_the_faster_thread_count_and_probes_again():
    """A fake clock makes one thread cheaper, then the default: the tuner follows, probing two
    steps of each every ten, and leaves the default count behind it."""
    default = blas_count()
    if default == 1:
        pytest.skip("one BLAS thread by default: nothing to choose between")
    one_is_cheaper = [True]
    state = {"now": 0.0}

    def clock():          # each call advances by half the cost of a step on the current count
        cheap = (blas_count() == 1) == one_is_cheaper[0]
        state["now"] += 0.5 if cheap else 1.0
        return state["now"]
    tuner = backend.BlasTuner(probe=2, every=10, clock=clock, check=lambda: [])   # nothing to disagree
    seen = []
    for step in range(20):
        if step == 10:
            one_is_cheaper[0] = False
        with tuner.step():
            seen.append(blas_count())
    assert seen[:4] == [1, 1, default, default] and set(seen[4:10]) == {1}
    assert seen[10:14] == [1, 1, default, default] and set(seen[14:]) == {default}
    with tuner.step():
        pass
    tuner.close()
    assert blas_count() == default
    with backend.blas_threads("auto", probe=2, every=10, check=lambda: []) as tuner:
        counts = [(item, blas_count()) for item in tuner.steps(range(5))]     # a loop's body timed as a step
    assert counts[:4] == [(0, 1), (1, 1), (2, default), (3, default)] and counts[4][0] == 4
    assert blas_count() == default                                           # the block restores it
    with backend.blas_threads(1) as fixed:                                   # a fixed count: the steps only run
        assert [(item, blas_count()) for item in fixed.steps(range(2))] == [(0, 1), (1, 1)]


def test_training_with_auto_threads_is_bitwise_the_same():
    """"auto" gives the default count's weights bit for bit, by design: the tuner switches to one
    thread only after checking that this run's step (a full batch and the last, shorter one)
    gives bitwise the same loss and gradients there (on OpenBLAS's Haswell kernels it does not,
    and the tuner then stays on the default; tests/test_reproducible.py runs each kernel)."""
    from numpy_ddpm import data
    from numpy_ddpm.app.train import ConfigError, TrainConfig, Trainer
    from numpy_ddpm.models import mlp
    from numpy_ddpm.schedule import Schedule
    x = backend.asarray(data.standardise(data.toy("spiral", 512 * 60, seed=0))[0])
    weights = []
    for threads in (None, "auto"):
        trainer = Trainer(mlp(2, hidden=128, seed=0), Schedule(), TrainConfig(nb_epochs=1, batch_size=512,
                                                                             blas_threads=threads))
        trainer.fit(x, progress=False)          # 60 steps: 20 on one thread, 20 on the default, 20 on the faster
        weights.append(backend.to_numpy(trainer.model.flat_params))
    assert (weights[0] == weights[1]).all()
    with pytest.raises(ConfigError, match="blas threads must be"):
        TrainConfig(blas_threads="two").check()


def test_blas_tuner_stays_on_the_default_unless_its_check_agrees_bitwise():
    """A check whose result depends on the thread count (as a product's rounding may) keeps the
    tuner on the default count at every step, however cheap one thread looks; no check, likewise."""
    default = blas_count()
    if default == 1:
        pytest.skip("one BLAS thread by default: nothing to choose between")
    clock = iter(range(10 ** 6)).__next__
    for check in (lambda: [backend.xp.asarray([blas_count()])], None):
        tuner = backend.BlasTuner(probe=2, every=5, clock=clock, check=check)
        assert not tuner.active and tuner.reason
        for _ in range(12):
            with tuner.step():
                assert blas_count() == default
        tuner.close()
    assert backend.BlasTuner(probe=2, every=5, check=lambda: [backend.xp.ones(3)]).active


def test_blas_tuner_does_nothing_on_a_device_backend(monkeypatch):
    default = blas_count()
    monkeypatch.setattr(backend, "name", "cupy")
    tuner = backend.BlasTuner(probe=2, every=5)
    for _ in range(12):
        with tuner.step():
            assert blas_count() == default
    tuner.close()
