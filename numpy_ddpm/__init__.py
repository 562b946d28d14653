"""numpy-ddpm: denoising diffusion (Ho et al., 2020) from scratch in NumPy.

The package in layers, each importing only from those above it in this list:

    backend.py, cpu.py   the array switch (numpy or cupy) and the CPU process's tuning
    nn/                  the engine: module tree, layers, convolution, losses, Adam, EMA, gradient checks
    data/                the toy sets and the images
    models/              the denoisers: how t and labels enter, the lecture's MLP and conv net
    diffusion/           schedule, Algorithm 1, the reverse process (Algorithm 2, DDIM, DPM-Solver++), the bound
    evaluation/          exact densities, distances, the digit classifier, quality, the plots
    app/                 the training loop, distributed runs, one demo run, the command line

Start with diffusion/training.py (Algorithm 1) and diffusion/sampling.py (Algorithm 2), then
nn/ for every forward pass with its backward.
"""

from . import backend, cpu  # backend first: it re-exports the names of cpu, which imports it

__version__ = "0.1.0"

cpu.set_up_process()        # the C allocator reuses freed blocks (cpu.reuse_freed_memory)
