"""numpy-ddpm: denoising diffusion (Ho et al., 2020) from scratch in NumPy.

Start with `diffusion.py` (Algorithms 1 and 2), `layers.py` (every forward pass with its
backward), `im2col.py` and `optim.py`; `backend.py` switches between numpy and cupy.
"""

__version__ = "0.1.0"
