"""The network of Ho et al. (2020): the U-Net of diffusion_tf (`models/unet.py` and `nn.py`),
written by hand, every backward under its forward.

    emb = MLP(sinusoid(step)) [+ class embedding]                     (N, 4 base), read by every block
    h = conv_in(x)                                                    skips = [h]
    down:   per level, nb_blocks x (ResBlock [, attention]), each output a skip;
            then a stride-2 conv (all levels but the last), its output a skip too
    middle: ResBlock, attention, ResBlock
    up:     per level, nb_blocks + 1 x (concat a popped skip, ResBlock [, attention]);
            then nearest x2 and a conv (all levels but the first)
    eps_hat = conv_out(SiLU(GroupNorm(h)))                            zero at initialisation

Level i works at image_size / 2^i with base * multipliers[i] channels; attention runs after the
blocks of the levels whose resolution is listed in `attention` (28x28, multipliers (1, 2, 2):
levels 28, 14, 7, attention (7,) at the lowest) and always in the middle. Parameters are named
as in the PyTorch port of the paper's code (pytorch_diffusion): "down.0.block.0.conv1.weight",
"mid.attn_1.q.weight", "up.1.upsample.conv.bias", "temb.dense.0.weight", ...

Where this departs from the paper's code (each said again where it happens):
- t: the models here receive the network time t / (T - 1) - 0.5 (conditioning.network_time);
  the paper embeds the integer step, which `conditioning.step_of` recovers exactly for the integers that
  Algorithm 1 and the samplers use. The sinusoids are computed in float64, then cast.
- labels: the paper's model is unconditional; a learned class embedding (K + 1 classes, class K
  "no label", for classifier-free guidance) is added to the time embedding.
- GroupNorm: `groups` groups (8 by default, the paper 32, too many for base 32's channels).
- Down-sampling pads 1 on every side; TensorFlow's "SAME" at stride 2 on an even size pads
  only the bottom and right. The output size is the same, the sampling grid shifted by a pixel.
- The resolutions that get attention are fixed when the model is built, from image_size (the
  paper tests h's size at run time), so forward takes images of exactly image_size.
- Initialisation is the paper's (`paper_init`, which overwrites the layers' PyTorch-style draws),
  except that its "zero" scale 1e-10 is exactly 0 here, and the class embedding starts N(0, 1).
"""

import math

from .. import backend
from ..errors import Error
from ..nn import Concat, Conv2d, Dropout, GroupNorm, Linear, Module, SelfAttention, SiLU, uniform
from ..nn import Upsample as NearestUpsample
from .conditioning import step_of

GROUPNORM_EPS = 1e-6        # the paper's (tf.contrib.layers.group_norm's default)


class UNetError(Error, ValueError):
    """A U-Net setting or input that cannot work: the message says which, in one sentence."""


def paper_init(layer, rng, scale=1.0):
    """diffusion_tf's `default_init(scale)` on a Linear or Conv2d, redrawn from `rng`: weights
    U(-a, a), a = sqrt(3 scale / fan_avg), fan_avg = (fan_in + fan_out) / 2 (a conv's fans count
    its kernel: C*KH*KW and O*KH*KW), biases zero. scale = 0 (the paper's 1e-10, for the last
    conv of each block and of the net, and attention's proj_out) gives zero weights."""
    w = layer.w
    receptive = math.prod(w.shape[2:])
    fan_avg = (w.shape[0] + w.shape[1]) * receptive / 2
    w[...] = uniform(rng, math.sqrt(3 * scale / fan_avg), w.shape) if scale else 0
    layer.b[...] = 0
    return layer


def conv(c_in, c_out, rng, kernel_size=3, stride=1, scale=1.0):
    """Conv2d with the paper's initialisation; padding kernel_size // 2 ("SAME" at stride 1)."""
    return paper_init(Conv2d(c_in, c_out, kernel_size, kernel_size // 2, rng, stride=stride), rng, scale)


def dense(d_in, d_out, rng, scale=1.0):
    return paper_init(Linear(d_in, d_out, rng), rng, scale)


def attention_block(channels, groups, rng):
    """nn.SelfAttention (the paper's attn_block) with the paper's initialisation of q, k, v
    (proj_out stays zero) and its GroupNorm epsilon."""
    block = SelfAttention(channels, groups, rng)
    for projection in (block.q, block.k, block.v):
        paper_init(projection, rng)
    block.norm.eps = GROUPNORM_EPS
    return block


# The time and the labels ----------------------------------------------------------------------

def timestep_embedding(steps, dim):
    """The paper's get_timestep_embedding: for the half = dim / 2 frequencies
    f_i = exp(-ln(10^4) i / (half - 1)), i = 0..half-1,

        emb = [sin(k f_0), ..., sin(k f_{half-1}), cos(k f_0), ..., cos(k f_{half-1})]

    steps: (N,) the integer steps k (float64)   emb: (N, dim), float64 (the paper's is float32)."""
    xp = backend.xp
    half = dim // 2
    frequencies = xp.exp(-math.log(10000) * xp.arange(half, dtype=xp.float64) / (half - 1))    # (half,)
    angles = steps.reshape(-1, 1) * frequencies                                                 # (N, half)
    return xp.concatenate((xp.sin(angles), xp.cos(angles)), axis=1)


class TimeEmbedding(Module):
    """emb = dense_1(SiLU(dense_0(sinusoid(k)))), k = step_of(t): the paper's `temb`.

    t: a float or (N,)   emb: (N, 4 base)
    """

    def __init__(self, base, T, rng):
        self.base, self.T = base, T
        self.dense = [dense(base, 4 * base, rng), dense(4 * base, 4 * base, rng)]
        self.act = SiLU()

    def forward(self, t, N):
        steps = backend.xp.broadcast_to(step_of(t, self.T), (N,))
        emb = timestep_embedding(steps, self.base).astype(self.dense[0].w.dtype)    # (N, base)
        return self.dense[1].forward(self.act.forward(self.dense[0].forward(emb)))

    def backward(self, demb):
        """Accumulates the gradients of the two dense layers; t itself gets none."""
        self.dense[0].backward(self.act.backward(self.dense[1].backward(demb)))


class Embedding(Module):
    """A learned vector per class, y = onehot(labels) w: a table look-up written as a product,
    which runs on cupy without scatter operations; its backward, dw += onehot^T dy, adds each
    sample's gradient to the row of its class.

    labels: (N,) integers in 0..K (K: "no label")   w: (K + 1, D)   y: (N, D)
    w starts N(0, 1), as torch.nn.Embedding's.
    """

    param_names = {"w": "weight"}

    def __init__(self, nb_rows, dim, rng):
        self.w = backend.asarray(rng.standard_normal((nb_rows, dim)), dtype=backend.dtype)
        self.dw = backend.xp.zeros_like(self.w)

    def forward(self, labels):
        xp = backend.xp
        rows = xp.arange(self.w.shape[0])
        self.one_hot = (xp.asarray(labels).reshape(-1, 1) == rows).astype(self.w.dtype)     # (N, K + 1)
        return self.one_hot @ self.w                                                        # (N, D)

    def backward(self, dy):
        """Accumulates dL/dw = onehot^T dy (K + 1, D); the labels are integers: no gradient."""
        self.dw += self.one_hot.T @ dy


# The blocks --------------------------------------------------------------------------------------

class ResBlock(Module):
    """The paper's resnet_block, with the time embedding added between its two convolutions:

        h = conv1(SiLU(norm1(x)))
        h = h + temb_proj(SiLU(emb))                    per channel
        h = conv2(dropout(SiLU(norm2(h))))              conv2 starts at zero: the block starts as the shortcut
        y = shortcut(x) + h                             a 1x1 conv (nin_shortcut) where c_in != c_out, else x

    x: (N, c_in, H, W)   emb: (N, emb_dim)   y: (N, c_out, H, W)
    `backward(dy)` returns the pair (dx, demb): emb feeds every block, and the U-Net sums demb.
    """

    takes = ("emb", "rng")

    def __init__(self, c_in, c_out, emb_dim, dropout, groups, rng):
        self.norm1, self.act1 = GroupNorm(groups, c_in, GROUPNORM_EPS), SiLU()
        self.conv1 = conv(c_in, c_out, rng)
        self.temb_act, self.temb_proj = SiLU(), dense(emb_dim, c_out, rng)
        self.norm2, self.act2 = GroupNorm(groups, c_out, GROUPNORM_EPS), SiLU()
        self.dropout = Dropout(dropout)
        self.conv2 = conv(c_out, c_out, rng, scale=0)
        self.nin_shortcut = conv(c_in, c_out, rng, kernel_size=1) if c_in != c_out else None

    def forward(self, x, emb, rng=None):
        h = self.conv1.forward(self.act1.forward(self.norm1.forward(x)))
        h = h + self.temb_proj.forward(self.temb_act.forward(emb))[:, :, None, None]
        h = self.conv2.forward(self.dropout.forward(self.act2.forward(self.norm2.forward(h)), rng))
        return self.shortcut(x) + h

    def shortcut(self, x):
        return x if self.nin_shortcut is None else self.nin_shortcut.forward(x)

    def backward(self, dy):
        dh = self.norm2.backward(self.act2.backward(self.dropout.backward(self.conv2.backward(dy))))
        demb = self.temb_act.backward(self.temb_proj.backward(dh.sum(axis=(2, 3))))    # (N, emb_dim)
        dx = self.norm1.backward(self.act1.backward(self.conv1.backward(dh)))
        dx += dy if self.nin_shortcut is None else self.nin_shortcut.backward(dy)       # x feeds both paths
        return dx, demb


class Downsample(Module):
    """A 3x3 convolution of stride 2, padding 1: (N, C, H, W) -> (N, C, H/2, W/2), H and W even.
    (TensorFlow's "SAME" would pad the bottom and right only; see the module's docstring.)"""

    def __init__(self, channels, rng):
        self.conv = conv(channels, channels, rng, stride=2)

    def forward(self, x):
        return self.conv.forward(x)

    def backward(self, dy):
        return self.conv.backward(dy)


class Upsample(Module):
    """Nearest-neighbour x2, then a 3x3 convolution: (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels, rng):
        self.nearest = NearestUpsample()
        self.conv = conv(channels, channels, rng)

    def forward(self, x):
        return self.conv.forward(self.nearest.forward(x))

    def backward(self, dy):
        return self.nearest.backward(self.conv.backward(dy))


class DownLevel(Module):
    """One level of the down path: nb_blocks x (ResBlock [, attention]), then a Downsample
    (None at the last level). Every output is also a skip: forward appends each to `skips`,
    backward pops each one's gradient from `dskips` and adds it to the one from below."""

    def __init__(self, blocks, attn, downsample):
        self.block, self.attn, self.downsample = blocks, attn, downsample

    def forward(self, h, skips, emb, rng):
        for i, block in enumerate(self.block):
            h = block.forward(h, emb, rng)
            if self.attn:
                h = self.attn[i].forward(h)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample.forward(h)
            skips.append(h)
        return h

    def backward(self, dh, dskips):
        """(dh at the level's input, demb summed over its blocks)."""
        demb = 0
        if self.downsample is not None:
            dh = self.downsample.backward(dh + dskips.pop())
        for i in reversed(range(len(self.block))):
            dh = dh + dskips.pop()                              # the output went on and into a skip
            if self.attn:
                dh = self.attn[i].backward(dh)
            dh, d = self.block[i].backward(dh)
            demb += d
        return dh, demb


class UpLevel(Module):
    """One level of the up path: nb_blocks + 1 x (concat a popped skip, ResBlock [, attention]),
    then an Upsample (None at the first level). Backward appends each skip's gradient to `dskips`."""

    def __init__(self, blocks, attn, upsample):
        self.block, self.attn, self.upsample = blocks, attn, upsample
        self.concat = [Concat() for _ in blocks]

    def forward(self, h, skips, emb, rng):
        for i, block in enumerate(self.block):
            h = block.forward(self.concat[i].forward(h, skips.pop()), emb, rng)
            if self.attn:
                h = self.attn[i].forward(h)
        if self.upsample is not None:
            h = self.upsample.forward(h)
        return h

    def backward(self, dh, dskips):
        """(dh at the level's input, demb summed over its blocks)."""
        demb = 0
        if self.upsample is not None:
            dh = self.upsample.backward(dh)
        for i in reversed(range(len(self.block))):
            if self.attn:
                dh = self.attn[i].backward(dh)
            dh, d = self.block[i].backward(dh)
            demb += d
            dh, dskip = self.concat[i].backward(dh)
            dskips.append(dskip)
        return dh, demb


class Middle(Module):
    """ResBlock, attention, ResBlock at the lowest resolution."""

    def __init__(self, channels, emb_dim, dropout, groups, rng):
        self.block_1 = ResBlock(channels, channels, emb_dim, dropout, groups, rng)
        self.attn_1 = attention_block(channels, groups, rng)
        self.block_2 = ResBlock(channels, channels, emb_dim, dropout, groups, rng)

    def forward(self, h, emb, rng):
        h = self.block_1.forward(h, emb, rng)
        return self.block_2.forward(self.attn_1.forward(h), emb, rng)

    def backward(self, dh):
        dh, demb = self.block_2.backward(dh)
        dh, d = self.block_1.backward(self.attn_1.backward(dh))
        demb += d
        return dh, demb


# The network -----------------------------------------------------------------------------------

class UNet(Module):
    """eps_theta(x_t, t[, y]): the paper's U-Net (see the module's docstring). Build it with `unet`.

    forward(x, t, labels=None, rng=None)
        x: (N, channels, image_size, image_size)
        t: the network time t / (T - 1) - 0.5, a float for the whole batch or an (N,) array
        labels: (N,) integers in 0..K, K = nb_classes "no label" (conditional models only)
        rng: the training step's generator, from which dropout draws (not needed in eval mode)
        returns eps_hat, the shape of x
    backward(dy) returns dx and accumulates every parameter's gradient.
    """

    takes = ("t", "labels", "rng")

    def __init__(self, channels, base, multipliers, nb_blocks, attention, dropout, groups, nb_classes,
                 image_size, T, rng, description):
        self.channels, self.image_size, self.nb_classes = channels, image_size, nb_classes
        self.description = description
        emb_dim = 4 * base
        self.temb = TimeEmbedding(base, T, rng)
        self.label_emb = Embedding(nb_classes + 1, emb_dim, rng) if nb_classes is not None else None
        self.conv_in = conv(channels, base, rng)

        def level_blocks(c_ins, c_out, size):
            blocks = [ResBlock(c_in, c_out, emb_dim, dropout, groups, rng) for c_in in c_ins]
            attn = [attention_block(c_out, groups, rng) for _ in blocks] if size in attention else []
            return blocks, attn

        skip_channels, c = [base], base                     # the channels of each skip, in order
        self.down = []
        for i, multiplier in enumerate(multipliers):
            c_out = base * multiplier
            blocks, attn = level_blocks([c] + [c_out] * (nb_blocks - 1), c_out, image_size >> i)
            c = c_out
            skip_channels += [c] * nb_blocks
            downsample = Downsample(c, rng) if i < len(multipliers) - 1 else None
            if downsample is not None:
                skip_channels.append(c)
            self.down.append(DownLevel(blocks, attn, downsample))
        self.mid = Middle(c, emb_dim, dropout, groups, rng)
        up = {}
        for i in reversed(range(len(multipliers))):
            c_out = base * multipliers[i]
            c_ins = []
            for _ in range(nb_blocks + 1):
                c_ins.append(c + skip_channels.pop())
                c = c_out
            blocks, attn = level_blocks(c_ins, c_out, image_size >> i)
            up[i] = UpLevel(blocks, attn, Upsample(c, rng) if i > 0 else None)
        self.up = [up[i] for i in range(len(multipliers))]  # indexed by level, as the paper's; run in reverse
        self.norm_out, self.act_out = GroupNorm(groups, c, GROUPNORM_EPS), SiLU()
        self.conv_out = conv(c, channels, rng, scale=0)
        self.flatten()

    def embedding(self, t, labels, N):
        """The embedding every block reads: the time's, plus the class's. (N, 4 base)"""
        emb = self.temb.forward(t, N)
        if self.label_emb is not None:
            emb = emb + self.label_emb.forward(labels)
        return emb

    def forward(self, x, t, labels=None, rng=None):
        self.check_inputs(x, t, labels)
        emb = self.embedding(t, labels, x.shape[0])
        h = self.conv_in.forward(x)
        skips = [h]
        for level in self.down:
            h = level.forward(h, skips, emb, rng)
        h = self.mid.forward(h, emb, rng)
        for level in reversed(self.up):
            h = level.forward(h, skips, emb, rng)
        return self.conv_out.forward(self.act_out.forward(self.norm_out.forward(h)))

    def backward(self, dy):
        dh = self.norm_out.backward(self.act_out.backward(self.conv_out.backward(dy)))
        dskips = []                                         # the up path appends, the down path pops
        demb = 0                                            # emb feeds every block: its gradients add up
        for level in self.up:                               # the reverse of forward: the first level first
            dh, d = level.backward(dh, dskips)
            demb += d
        dh, d = self.mid.backward(dh)
        demb += d
        for level in reversed(self.down):
            dh, d = level.backward(dh, dskips)
            demb += d
        dx = self.conv_in.backward(dh + dskips.pop())       # conv_in's output was the first skip
        if self.label_emb is not None:
            self.label_emb.backward(demb)
        self.temb.backward(demb)
        return dx

    def check_inputs(self, x, t, labels):
        """One-sentence errors for inputs this model cannot take."""
        size = (self.image_size, self.image_size)
        if x.ndim != 4 or x.shape[1] != self.channels or tuple(x.shape[2:]) != size:
            raise UNetError(f"this U-Net takes images of shape (N, {self.channels}, {size[0]}, {size[1]}), "
                            f"not {tuple(x.shape)}")
        N = x.shape[0]
        if getattr(t, "ndim", 0) != 0 and tuple(t.shape) != (N,):
            raise UNetError(f"t must be a float or an array of shape ({N},), not of shape {tuple(t.shape)}")
        if self.nb_classes is None and labels is not None:
            raise UNetError("this U-Net is unconditional (nb_classes=None) and takes no labels")
        if self.nb_classes is not None:
            if labels is None:
                raise UNetError(f"this U-Net is conditional: pass labels (N,) in 0..{self.nb_classes} "
                                f"({self.nb_classes}: no label)")
            shape = tuple(backend.asarray(labels).shape)
            if shape != (N,):
                raise UNetError(f"labels must be an array of shape ({N},), not of shape {shape}")


def unet(channels=1, base=32, multipliers=(1, 2, 2), nb_blocks=1, attention=(7,), dropout=0.1, groups=8,
         nb_classes=None, seed=0, image_size=28, T=1000):
    """The paper's U-Net for images of `channels` x image_size x image_size (see the module's
    docstring): `base` channels at the first level, base * multipliers[i] at level i, nb_blocks
    residual blocks a level on the way down (nb_blocks + 1 on the way up), self-attention at the
    resolutions in `attention` (and in the middle), dropout in every block, GroupNorm of `groups`
    groups, a class embedding of nb_classes + 1 classes (None: unconditional), and the step of
    the T-step schedule recovered from the network time. The paper's CIFAR-10 model is
    unet(3, 128, (1, 2, 2, 2), 2, (16,), 0.1, 32, image_size=32).

    Weights are drawn from backend.host_rng(seed): the same model on every backend.
    """
    check_unet(channels, base, multipliers, nb_blocks, attention, dropout, groups, nb_classes, image_size, T)
    kwargs = dict(channels=channels, base=base, multipliers=list(multipliers), nb_blocks=nb_blocks,
                  attention=list(attention), dropout=dropout, groups=groups, nb_classes=nb_classes,
                  image_size=image_size, T=T)
    description = {"name": "unet", "kwargs": {key: value for key, value in kwargs.items() if value is not None}}
    return UNet(channels, base, tuple(multipliers), nb_blocks, tuple(attention), dropout, groups, nb_classes,
                image_size, T, backend.host_rng(seed), description)


def check_unet(channels=1, base=32, multipliers=(1, 2, 2), nb_blocks=1, attention=(7,), dropout=0.1, groups=8,
               nb_classes=None, image_size=28, T=1000):
    """Raise UNetError, in one sentence, unless `unet` can build a model of these settings (the
    demos ask before they write anything)."""
    multipliers, attention = tuple(multipliers), tuple(attention)
    levels = len(multipliers)
    sizes = [image_size >> i for i in range(levels)]
    if channels < 1 or image_size < 1 or nb_blocks < 1 or not multipliers or min(multipliers) < 1:
        raise UNetError("channels, image_size, nb_blocks and every multiplier must be positive integers")
    if base < 4 or base % 2:
        raise UNetError(f"base must be even and at least 4 (its sinusoids come in sin-cos pairs), not {base}")
    if image_size % 2 ** (levels - 1):
        halves = " -> ".join(f"{image_size / 2 ** i:g}" for i in range(levels))
        raise UNetError(f"{levels} levels cannot halve an image of size {image_size} each time ({halves})")
    unknown = sorted(set(attention) - set(sizes))
    if unknown:
        raise UNetError(f"attention at resolution {unknown[0]}: this U-Net's levels are at {sizes}")
    widths = sorted({base * m for m in multipliers})
    if any(width % groups for width in widths):
        raise UNetError(f"{groups} groups do not divide every channel count of this U-Net ({widths})")
    if nb_classes is not None and nb_classes < 1:
        raise UNetError(f"nb_classes must be a positive integer or None, not {nb_classes}")
    if T < 2:
        raise UNetError(f"T must be at least 2, not {T}")
    if not 0 <= dropout < 1:
        raise UNetError(f"the dropout probability must be in [0, 1), not {dropout}")
