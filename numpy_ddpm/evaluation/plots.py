"""Figures of the demos (matplotlib, written to files; the demos may also show them)."""

import os
import sys

import matplotlib

if "DISPLAY" not in os.environ and sys.platform not in ("darwin", "win32"):
    matplotlib.use("Agg")       # no screen: draw into files only

import matplotlib.pyplot as plt
from matplotlib import animation, ticker

from .. import backend

TRAJECTORY_TIMES = [1000, 875, 750, 625, 500, 375, 250, 125, 0]


def _groups(generated, labels):
    """[(points, colour, legend)]: all generated points in red, or one colour per class."""
    if labels is None:
        return [(generated, "red", "generated")]
    colours = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    return [(generated[labels == k], colours(k % colours.N), f"class {k}") for k in backend.np.unique(labels)]


def _draw_points(ax, data, generated, title=None, labels=None):
    """A histogram for 1-D data, a scatter plot for 2-D, training data in grey; generated points
    in red, or coloured by the class asked for (labels (N,))."""
    np = backend.np
    if data.shape[1] == 1:
        low = min(data.min(), generated.min())
        high = max(data.max(), generated.max())
        bins = np.linspace(low, high, 100)
        ax.hist(data[:, 0], bins, density=True, color="lightgray", label="training data")
        for points, colour, name in _groups(generated, labels):      # each class's share of the density
            weights = np.full(len(points), 1 / (len(generated) * (bins[1] - bins[0])))
            ax.hist(points[:, 0], bins, weights=weights, histtype="step", color=colour, label=name)
    else:
        ax.scatter(data[:, 0], data[:, 1], s=1, color="lightgray", label="training data", rasterized=True)
        for points, colour, name in _groups(generated, labels):
            ax.scatter(points[:, 0], points[:, 1], s=2, color=colour, label=name, rasterized=True)
        ax.set_aspect("equal")
    if title:
        ax.set_title(title)


def points(data, generated, path, title, labels=None):
    fig, ax = plt.subplots(figsize=(6, 6))
    _draw_points(ax, data, generated, title, labels)
    ax.legend(loc="upper right", markerscale=4, fontsize="small" if labels is not None else None)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


class PlainLogFormatter(ticker.LogFormatter):
    """Log-axis tick labels as plain numbers (0.1, 0.5, 1): matplotlib's default writes 10^-1 in
    its math text, whose parser costs about 0.4 s to set up in every process that draws one."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def plain_log_scale(ax, which="y"):
    """Put the axes' x or y axis (`which`) on a log scale labelled by PlainLogFormatter."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def loss_curve(losses, path):
    fig, ax = plt.subplots(figsize=(6, 3))
    steps, values = zip(*losses) if losses else ((), ())
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over the logging window)")
    plain_log_scale(ax)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def image_grid(images, columns):
    """(N, 1, H, W) images in [0, 1] -> one (rows*H, columns*W) array with 1-pixel gaps."""
    np = backend.np
    N, _, H, W = images.shape
    rows = -(-N // columns)
    grid = np.ones((rows * (H + 1) + 1, columns * (W + 1) + 1))
    for k in range(N):
        r, c = divmod(k, columns)
        grid[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = images[k, 0]
    return grid


def images(train, generated, path, columns=16):
    """The lecture's layout: training images on top, generated ones below, in [0, 1]."""
    np = backend.np
    fig, axes = plt.subplots(2, 1, figsize=(columns * 0.5, 2 + 2 * len(generated) / columns * 0.5))
    for ax, batch, title in zip(axes, (train, generated), ("training images", "generated images")):
        ax.imshow(image_grid(np.clip(batch, 0, 1), columns), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def trajectory(frames, data, path_png, path_gif, as_images):
    """The reverse process: a strip at t = 1000, 875, ..., 0 and a GIF of every recorded step.

    frames: list of (t, host samples) in decreasing t, in the data's own scale."""
    by_t = dict(frames)
    # the recorded time nearest each of the strip's (DDIM visits only some of the T steps)
    strip = sorted({min(by_t, key=lambda t: abs(t - wanted)) for wanted in TRAJECTORY_TIMES}, reverse=True)
    fig, axes = plt.subplots(1, len(strip), figsize=(2 * len(strip), 2.3))
    for ax, t in zip(axes, strip):
        draw_frame(ax, by_t[t], data, as_images, f"t = {t}")
    fig.savefig(path_png, dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4))
    gif_frames = frames[::max(1, len(frames) // 100)]
    if gif_frames[-1] is not frames[-1]:
        gif_frames.append(frames[-1])

    def update(k):
        ax.clear()
        t, x = gif_frames[k]
        draw_frame(ax, x, data, as_images, f"t = {t}")

    movie = animation.FuncAnimation(fig, update, frames=len(gif_frames))
    movie.save(path_gif, writer=animation.PillowWriter(fps=12))
    plt.close(fig)


def draw_frame(ax, x, data, as_images, title):
    if as_images:
        ax.imshow(image_grid(backend.np.clip(x[:16], 0, 1), 4), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
        ax.set_title(title)
        return
    _draw_points(ax, data, x, title)
    if x.shape[1] == 2:         # fixed limits, so that the GIF's frames do not jump
        lim = 1.5 * backend.np.abs(data).max()
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xticks([])
        ax.set_yticks([])


def guidance_grids(grids, scales, columns, path):
    """The conditional image grids (one row per class) drawn with each guidance scale s, side by
    side. grids: list of (N, 1, H, W) in [0, 1], one per scale."""
    np = backend.np
    size = (len(grids) * (columns * 0.5 + 0.3), len(grids[0]) / columns * 0.5 + 0.6)
    fig, axes = plt.subplots(1, len(grids), figsize=size, squeeze=False)
    for ax, batch, s in zip(axes[0], grids, scales):
        ax.imshow(image_grid(np.clip(batch, 0, 1), columns), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"guidance s = {s:g}")
        ax.axis("off")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def bound(terms, exact, path, title=None):
    """The variational bound term by term (likelihood.py): L_1..L_{T-1} and L_T against t, both
    on log scales, and the running sum L_0 + ... + L_t reaching the bound at t = T, beside the exact
    NLL (a line; None: unknown). terms: (T + 1,) nats per dimension, L_0 first."""
    np = backend.np
    T = len(terms) - 1
    t = np.arange(T + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    left.plot(t[1:T], terms[1:T], lw=1, label="$L_{t}$ = KL(q(x$_{t}$ | x$_{t+1}$, x$_0$) || p(x$_{t}$ | x$_{t+1}$))")
    left.plot([T], [terms[T]], "o", color="C3", label=f"$L_T$ (prior) = {terms[T]:.2g}")
    left.set_yscale("log")
    left.set_xscale("log")          # the nats are spent in the first steps
    left.set_xlabel("t")
    left.set_ylabel("nats per dimension")
    left.legend(fontsize=8)
    right.plot(t[1:], np.cumsum(terms)[1:], color="C0", label=f"$L_0$ + ... + $L_t$ ($L_0$ = {terms[0]:.3f})")
    right.set_xscale("log")
    right.axhline(terms.sum(), color="C0", ls=":", lw=1, label=f"bound = {terms.sum():.4f}")
    if exact is not None:
        right.axhline(exact, color="k", ls="--", lw=1, label=f"exact NLL = {exact:.4f}")
    right.set_xlabel("t")
    right.set_ylabel("nats per dimension")
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
