"""The lecture's PyTorch toy experiment, for the end-to-end comparison of benchmarks/bench.py:
the spiral, 25000 points, 100 epochs at batch 25, Adam re-created each epoch as in the
lecture, an EMA of decay 0.9999, then 1000 generated points. Prints the wall time."""

import math
import time

import torch

from workloads import torch_models, torch_train_step

T = 1000


def sample_spiral(nb):
    u = torch.rand(nb)
    rho = u * 0.65 + 0.25 + torch.rand(nb) * 0.15
    theta = u * math.pi * 3
    return torch.stack((theta.cos() * rho, theta.sin() * rho), 1)


def main():
    start = time.perf_counter()
    torch.manual_seed(0)
    train_input = sample_spiral(25000)
    train_mean, train_std = train_input.mean(), train_input.std()
    beta = torch.linspace(1e-4, 0.02, T)
    alpha = 1 - beta
    alpha_bar = alpha.log().cumsum(0).exp()
    sigma = beta.sqrt()
    model = torch_models()[0]()
    ema = [p.detach().clone() for p in model.parameters()]
    for _ in range(100):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x0 in train_input.split(25):
            torch_train_step(model, optimizer, ema, (x0 - train_mean) / train_std, alpha_bar)
    with torch.no_grad():
        for average, p in zip(ema, model.parameters()):
            p.copy_(average)
        x = torch.randn(1000, 2)
        for t in range(T - 1, -1, -1):
            output = model((x, t / (T - 1) - 0.5))
            z = torch.zeros_like(x) if t == 0 else torch.randn_like(x)
            x = 1 / torch.sqrt(alpha[t]) * (x - (1 - alpha[t]) / torch.sqrt(1 - alpha_bar[t]) * output) + sigma[t] * z
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
