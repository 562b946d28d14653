"""The benchmark's workloads: our training step and sampling, and the same in PyTorch,
mirroring the lecture's code. PyTorch is imported only inside the functions that build its
side, which run in a process of their own (harness.py)."""

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from numpy_ddpm import backend  # noqa: E402
from numpy_ddpm.diffusion import generate, train_step  # noqa: E402
from numpy_ddpm.layers import Conv2d  # noqa: E402
from numpy_ddpm.models import convnet, mlp, unet  # noqa: E402
from numpy_ddpm.optim import EMA, Adam  # noqa: E402
from numpy_ddpm.schedule import Schedule  # noqa: E402

T = 1000


# FLOPs of the matrix products (multiply-adds count 2) ---------------------------------------

def mlp_forward_flops(n, dim=2, hidden=256):
    return 2 * n * ((dim + 1) * hidden + 2 * hidden * hidden + hidden * dim)


def conv_forward_flops(n, h, w, channels=1, width=64, k=5):
    layers = [(channels + 1, width)] + [(width, width)] * 5 + [(width, channels)]
    return sum(2 * n * h * w * c_in * k * k * c_out for c_in, c_out in layers)


def unet_forward_flops(n, model):
    """The matrix products of one forward pass of `model` (a U-Net) at batch n, counted by
    running it once on one 28x28 image: every convolution and Linear layer, and attention's
    q k^T and weights v (2 (HW)^2 C each)."""
    from numpy_ddpm.nn import Linear, SelfAttention
    counted = []

    def counting(module, count):
        forward = module.forward

        def wrapped(x, *args, **kwargs):
            y = forward(x, *args, **kwargs)
            counted.append(count(module, x, y))
            return y
        module.forward = wrapped
    for module in model.modules():
        if isinstance(module, Conv2d):
            counting(module, lambda m, x, y: 2 * y.size * m.w[0].size)
        elif isinstance(module, Linear):
            counting(module, lambda m, x, y: 2 * y.size * m.w.shape[1])
        elif isinstance(module, SelfAttention):
            counting(module, lambda m, x, y: 4 * (x.shape[2] * x.shape[3]) ** 2 * x.shape[1])
    with backend.precision("float32"):
        model.train(False).forward(backend.xp.zeros((1, 1, 28, 28), backend.dtype), backend.xp.zeros(1, backend.dtype))
    return n * sum(counted)


# Our implementation ---------------------------------------------------------------------------

def with_algorithm(model, algorithm):
    """Set every Conv2d of `model` to `algorithm` ("im2col", "winograd"; None: leave "auto")."""
    if algorithm is not None:
        for layer in model.layers:
            if isinstance(layer, Conv2d):
                layer.algorithm = algorithm
    return model


def ours_train(make, shape, algorithm=None):
    model, schedule = with_algorithm(make(), algorithm), Schedule()
    optimizer, ema = Adam(model.flat_parameters()), EMA(model.flat_parameters())
    rng = backend.default_rng(0)
    x0 = backend.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))

    def step():
        train_step(model, optimizer, x0, schedule, rng, ema)
    return step


def ours_sampling_steps(make, shape, nb_steps, algorithm=None):
    """`nb_steps` steps of Algorithm 2 (the last nb_steps of the 1000)."""
    model = with_algorithm(make(), algorithm)
    schedule = Schedule()
    rng = backend.default_rng(0)

    class Tail:       # the schedule seen from step nb_steps - 1 down to 0
        T = nb_steps
        host = schedule.host

        @staticmethod
        def network_time(t):
            return schedule.network_time(t)

    def run():
        generate(model, shape, Tail, rng)
    return run


def ours_unet_forward(n):
    """One forward pass of the U-Net (base 32) at batch n in evaluation mode: a sampling step's cost."""
    model = unet(1, image_size=28).train(False)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((n, 1, 28, 28)), dtype=backend.dtype)
    t = Schedule().network_time(backend.asarray(rng.integers(0, T, n)), backend.dtype)
    return lambda: model.forward(x, t)


def sync():
    if backend.name == "cupy":
        backend.xp.cuda.Stream.null.synchronize()


# PyTorch, mirroring the lecture's code ---------------------------------------------------------

def torch_models():
    import torch
    from torch import nn

    class TimeAppender(nn.Module):
        def forward(self, u):
            x, t = u
            if not torch.is_tensor(t):
                t = x.new_full((x.size(0),), t)
            t = t.view((-1,) + (1,) * (x.dim() - 1)).expand_as(x[:, :1])
            return torch.cat((x, t), 1)

    def torch_mlp(dim=2, nh=256):
        return nn.Sequential(TimeAppender(), nn.Linear(dim + 1, nh), nn.ReLU(), nn.Linear(nh, nh), nn.ReLU(),
                             nn.Linear(nh, nh), nn.ReLU(), nn.Linear(nh, dim))

    def torch_convnet(channels=1, nc=64, ks=5):
        layers = [TimeAppender(), nn.Conv2d(channels + 1, nc, ks, padding=ks // 2), nn.ReLU()]
        for _ in range(5):
            layers += [nn.Conv2d(nc, nc, ks, padding=ks // 2), nn.ReLU()]
        layers.append(nn.Conv2d(nc, channels, ks, padding=ks // 2))
        return nn.Sequential(*layers)
    return torch_mlp, torch_convnet


def torch_train_step(model, optimizer, ema, x0, alpha_bar):
    """The lecture's training step (Algorithm 1 with Adam), then the EMA of the weights."""
    import torch
    t = torch.randint(T, (x0.size(0),) + (1,) * (x0.dim() - 1), device=x0.device)
    eps = torch.randn_like(x0)
    xt = torch.sqrt(alpha_bar[t]) * x0 + torch.sqrt(1 - alpha_bar[t]) * eps
    output = model((xt, t / (T - 1) - 0.5))
    torch_update(model, optimizer, ema, (eps - output).pow(2).mean())


def torch_update(model, optimizer, ema, loss):
    """Adam's step on the loss's gradients, then the EMA of the weights."""
    import torch
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for average, p in zip(ema, model.parameters()):
            average.copy_(0.9999 * average + (1 - 0.9999) * p)


def torch_model(name):
    torch_mlp, torch_convnet = torch_models()
    return {"mlp": torch_mlp, "convnet": torch_convnet}[name]()


def torch_train(model_name, shape, device):
    import torch
    model = torch_model(model_name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = [p.detach().clone() for p in model.parameters()]
    beta = torch.linspace(1e-4, 0.02, T, device=device)
    alpha_bar = (1 - beta).log().cumsum(0).exp()
    x0 = torch.randn(shape, device=device)
    return lambda: torch_train_step(model, optimizer, ema, x0, alpha_bar)


def torch_sampling_steps(model_name, shape, nb_steps, device):
    import torch
    model = torch_model(model_name).to(device)
    beta = torch.linspace(1e-4, 0.02, T, device=device)
    alpha = 1 - beta
    alpha_bar = alpha.log().cumsum(0).exp()
    sigma = beta.sqrt()

    def run():
        with torch.no_grad():
            x = torch.randn(shape, device=device)
            for t in range(nb_steps - 1, -1, -1):
                output = model((x, t / (T - 1) - 0.5))
                z = torch.zeros_like(x) if t == 0 else torch.randn_like(x)
                x = 1 / torch.sqrt(alpha[t]) * (x - (1 - alpha[t]) / torch.sqrt(1 - alpha_bar[t]) * output) \
                    + sigma[t] * z
    return run


def torch_unet(device):
    from torch_unet import TorchUNet
    return TorchUNet(channels=1, base=32, multipliers=(1, 2, 2), nb_blocks=1, attention=(7,), groups=8,
                     image_size=28, dropout=0.1).to(device)


def torch_unet_train(n, device):
    """Algorithm 1 with Adam and the EMA, as torch_train_step, the U-Net taking the integer step."""
    import torch
    model = torch_unet(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = [p.detach().clone() for p in model.parameters()]
    beta = torch.linspace(1e-4, 0.02, T, device=device)
    alpha_bar = (1 - beta).log().cumsum(0).exp()
    x0 = torch.randn((n, 1, 28, 28), device=device)

    def step():
        t = torch.randint(T, (n,), device=device)
        eps = torch.randn_like(x0)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        torch_update(model, optimizer, ema, (eps - model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)).pow(2).mean())
    return step


def torch_unet_forward(n, device):
    import torch
    model = torch_unet(device).eval()
    x, t = torch.randn((n, 1, 28, 28), device=device), torch.randint(T, (n,), device=device)

    def run():
        with torch.no_grad():
            model(x, t)
    return run


class Workload:
    """One row of the benchmark: `ours(algorithm)` and `torch(device)` build a function to
    time (one call: a training step, or a sampling run); `flops` are the matrix products'
    floating-point operations of one call, `items` what one call produces (1 step, or samples)."""

    def __init__(self, name, kind, ours, torch, flops, calls, repeats, items=1, algorithms=(None,), blas_threads=None):
        self.name, self.kind, self.ours, self.torch = name, kind, ours, torch
        self.flops, self.calls, self.repeats, self.items = flops, calls, repeats, items
        self.algorithms = algorithms        # the conv rows: one per convolution algorithm
        self.blas_threads = blas_threads    # ours on that many BLAS threads, as the demos run it (None: all)
        self.warmup = 2 if kind == "sample" else 5


CONV_ALGORITHMS = ("im2col", "winograd")


def workloads(quick):
    """Every workload, in the order of the table (`quick`: a smoke subset, fewer calls)."""
    sample_steps = 5 if quick else 20
    rows = [
        Workload("MLP train step, batch 25", "train", lambda a: ours_train(lambda: mlp(2), (25, 2)),
                 lambda d: torch_train("mlp", (25, 2), d), 3 * mlp_forward_flops(25), 200 if quick else 1000, 5,
                 blas_threads=1),          # as demos/toy2d.py trains batches up to 256
        Workload("MLP train step, batch 1024", "train", lambda a: ours_train(lambda: mlp(2), (1024, 2)),
                 lambda d: torch_train("mlp", (1024, 2), d), 3 * mlp_forward_flops(1024), 20 if quick else 100, 5),
        Workload("MLP sampling, 1000 points", "sample",
                 lambda a: ours_sampling_steps(lambda: mlp(2), (1000, 2), 100),
                 lambda d: torch_sampling_steps("mlp", (1000, 2), 100, d), 100 * mlp_forward_flops(1000),
                 1, 3 if quick else 5, 1000 * 100 / T),
    ]
    for h, n in ((8, 25), (8, 128), (28, 25), (28, 128)):
        if quick and (h, n) != (8, 25):
            continue
        rows.append(Workload(f"Conv train step, {h}x{h}, batch {n}", "train",
                             lambda a, h=h, n=n: ours_train(lambda: convnet(1), (n, 1, h, h), a),
                             lambda d, h=h, n=n: torch_train("convnet", (n, 1, h, h), d),
                             3 * conv_forward_flops(n, h, h), 3 if quick or h == 28 else 10, 3 if quick else 5,
                             algorithms=CONV_ALGORITHMS))
    for h, n in ((8, 64), (28, 16)):
        if quick and h == 28:
            continue
        rows.append(Workload(f"Conv sampling, {n} images {h}x{h}", "sample",
                             lambda a, h=h, n=n: ours_sampling_steps(lambda: convnet(1), (n, 1, h, h), sample_steps, a),
                             lambda d, h=h, n=n: torch_sampling_steps("convnet", (n, 1, h, h), sample_steps, d),
                             sample_steps * conv_forward_flops(n, h, h), 1, 3 if quick else 5, n * sample_steps / T,
                             algorithms=CONV_ALGORITHMS))
    if not quick:       # the paper's network (models/unet.py): base 32, (1, 2, 2), one block a level, 1.1 M weights
        rows.append(Workload("U-Net train step, 28x28, batch 64", "train",
                             lambda a: ours_train(lambda: unet(1, image_size=28), (64, 1, 28, 28)),
                             lambda d: torch_unet_train(64, d), 3 * unet_forward_flops(64, unet(1, image_size=28)),
                             2, 5))
        rows.append(Workload("U-Net forward, 256 images 28x28", "sample", lambda a: ours_unet_forward(256),
                             lambda d: torch_unet_forward(256, d), unet_forward_flops(256, unet(1, image_size=28)),
                             1, 5, 256 / T))
    return rows
