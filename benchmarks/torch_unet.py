"""The paper's U-Net written again with torch modules (as pytorch_diffusion ports diffusion_tf),
its parameters named as numpy_ddpm.models.unet's, so that `load_state_dict` takes ours by name:
the oracle of tests/test_unet_torch.py and PyTorch's side of the U-Net rows of bench.py.
Imports torch: only for the tests and benchmarks that have it."""

import math

import torch

F = torch.nn.functional
EPS = 1e-6      # GroupNorm's, as the paper's


class ResBlock(torch.nn.Module):
    def __init__(self, c_in, c_out, emb_dim, groups, dropout=0.0):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.norm1 = torch.nn.GroupNorm(groups, c_in, eps=EPS)
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = torch.nn.Linear(emb_dim, c_out)
        self.norm2 = torch.nn.GroupNorm(groups, c_out, eps=EPS)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = torch.nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class Attention(torch.nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.norm = torch.nn.GroupNorm(groups, channels, eps=EPS)
        self.q, self.k, self.v, self.proj = (torch.nn.Linear(channels, channels) for _ in range(4))

    def forward(self, x):
        N, C, H, W = x.shape
        rows = self.norm(x).permute(0, 2, 3, 1).reshape(N, H * W, C)
        q, k, v = self.q(rows), self.k(rows), self.v(rows)
        w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), dim=-1)
        return x + self.proj(w @ v).reshape(N, H, W, C).permute(0, 3, 1, 2)


class Resample(torch.nn.Module):
    def __init__(self, channels, down):
        super().__init__()
        self.down = down
        self.conv = torch.nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=1)

    def forward(self, x):
        return self.conv(x if self.down else F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(torch.nn.Module):
    def __init__(self, blocks, attn, resample, name):
        super().__init__()
        self.block, self.attn = torch.nn.ModuleList(blocks), torch.nn.ModuleList(attn)
        setattr(self, name, resample)


class TimeMLP(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.dense = torch.nn.ModuleList([torch.nn.Linear(base, 4 * base), torch.nn.Linear(4 * base, 4 * base)])


class Middle(torch.nn.Module):
    def __init__(self, c, emb_dim, groups, dropout):
        super().__init__()
        self.block_1, self.attn_1 = ResBlock(c, c, emb_dim, groups, dropout), Attention(c, groups)
        self.block_2 = ResBlock(c, c, emb_dim, groups, dropout)


class TorchUNet(torch.nn.Module):
    """diffusion_tf's model(), as pytorch_diffusion's Model, with a class embedding when
    nb_classes is given. forward(x, steps, labels=None): steps the integer t (N,)."""

    def __init__(self, channels, base, multipliers, nb_blocks, attention, groups, image_size, nb_classes=None,
                 dropout=0.0, **_):
        super().__init__()
        self.base, emb_dim = base, 4 * base
        self.temb = TimeMLP(base)
        if nb_classes is not None:
            self.label_emb = torch.nn.Embedding(nb_classes + 1, emb_dim)
        self.conv_in = torch.nn.Conv2d(channels, base, 3, padding=1)
        hs_channels, c, size = [base], base, image_size
        self.down = torch.nn.ModuleList()
        for i, m in enumerate(multipliers):
            blocks, attn = [], []
            for _ in range(nb_blocks):
                blocks.append(ResBlock(c, base * m, emb_dim, groups, dropout))
                c = base * m
                if size in attention:
                    attn.append(Attention(c, groups))
                hs_channels.append(c)
            down = None
            if i != len(multipliers) - 1:
                down = Resample(c, down=True)
                hs_channels.append(c)
                size //= 2
            self.down.append(Level(blocks, attn, down, "downsample"))
        self.mid = Middle(c, emb_dim, groups, dropout)
        up = []
        for i in reversed(range(len(multipliers))):
            blocks, attn = [], []
            for _ in range(nb_blocks + 1):
                blocks.append(ResBlock(c + hs_channels.pop(), base * multipliers[i], emb_dim, groups, dropout))
                c = base * multipliers[i]
                if size in attention:
                    attn.append(Attention(c, groups))
            upsample = None
            if i != 0:
                upsample = Resample(c, down=False)
                size *= 2
            up.insert(0, Level(blocks, attn, upsample, "upsample"))
        self.up = torch.nn.ModuleList(up)
        self.norm_out = torch.nn.GroupNorm(groups, c, eps=EPS)
        self.conv_out = torch.nn.Conv2d(c, channels, 3, padding=1)

    def forward(self, x, steps, labels=None):
        half = self.base // 2
        frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
        angles = steps.to(torch.float64)[:, None] * frequencies[None]
        emb = torch.cat((torch.sin(angles), torch.cos(angles)), dim=1).to(x.dtype)
        emb = self.temb.dense[1](F.silu(self.temb.dense[0](emb)))
        if labels is not None:
            emb = emb + self.label_emb(labels)
        hs = [self.conv_in(x)]
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(hs[-1], emb)
                if len(level.attn):
                    h = level.attn[i](h)
                hs.append(h)
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], emb)), emb)
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(torch.cat((h, hs.pop()), dim=1), emb)
                if len(level.attn):
                    h = level.attn[i](h)
            if level.upsample is not None:
                h = level.upsample(h)
        assert not hs
        return self.conv_out(F.silu(self.norm_out(h)))
