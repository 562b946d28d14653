"""Winograd's minimal filtering: a convolution with fewer multiplications (Lavin & Gray 2016).

Notation (as in im2col.py, plus):
    r       kernel size, KH = KW = r
    m       output tile size: the outputs are cut into m x m tiles
    alpha   input tile size, alpha = m + r - 1 (tiles overlap by r - 1)
    TH, TW  tiles down and across, TH = ceil(OH / m), TW = ceil(OW / m); T = TH * TW
    O       output channels

In one dimension, F(m, r) computes m outputs of a correlation with an r-tap kernel g,
y_i = sum_k g_k d_{i+k}, from alpha inputs d with alpha multiplications instead of m * r:

    y = A^T [(G g) * (B^T d)]                       (* elementwise; A^T: (m, alpha), G: (alpha, r),
                                                     B^T: (alpha, alpha))
and in two dimensions, nesting it, a tile of m x m outputs from an alpha x alpha input tile:

    Y = A^T [(G g G^T) * (B^T d B)] A               (F(4x4, 5x5): 64 multiplications, not 400)

Where the matrices come from (Toom-Cook): the product of a polynomial a of degree m - 1 and g
of degree r - 1 has alpha coefficients c, fixed by its values at alpha points p_j (one of
them infinity, where a polynomial's "value" is its leading coefficient). With V_n the
(alpha, n) matrix of rows (1, p, ..., p^(n-1)) (row (0, ..., 0, 1) at infinity):

    c = V_alpha^-1 [(V_r g) * (V_m a)]

This is linear in a, c = K a with K[k, i] = g_(k - i); the correlation is its transpose,
y = K^T d = V_m^T [(V_r g) * (V_alpha^-T d)], so A^T = V_m^T, G = V_r, B^T = V_alpha^-T.
`transform_matrices` builds them in exact rational arithmetic, then scales each row of B^T to
a largest entry of 1 and the matching row of G by the inverse (the product is unchanged;
entries of moderate size keep the float32 rounding small).

Layout: a whole layer is a handful of large products over stacked tiles. Activations come
and go as (N, C, H, W) views of arrays stored channel first with the batch innermost,
(C, H, W, N), so every gather copies runs of N numbers and the layers pass that layout on
(ReLU keeps the layout of its input). With the tiles d[i, j, c, (th, tw, n)]:

    V = B^T d B         two products with B^T: (alpha, alpha, C, T*N)
    U = G w G^T         (alpha, alpha, O, C), in float64, then rounded once
    M[a, b] = U[a, b] V[a, b]       alpha^2 products (O, C) x (C, T*N): the bulk of the work
    Y = A^T M A         two products with A^T: (m, m, O, T*N), then scattered onto y

Backward: the input gradient is the convolution of dy with the turned kernel (as in
Im2colConvolution.backward), so the same code; the weight gradient is the adjoint of the forward,
dM = A dY A^T, dU[a, b] = dM[a, b] V[a, b]^T, dw = G^T dU G.
"""

from fractions import Fraction

from .. import backend

# Interpolation points (infinity is added): F(4x4, 5x5) as in the issue, F(4x4, 3x3) for 3x3 kernels
POINTS = {
    5: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)),
    3: (0, 1, -1, 2, -2),
}
M_TILE = 4


def supports(kernel_size):
    """Whether a Winograd transform is defined here for this kernel size."""
    return kernel_size in POINTS


# The transforms, exact -----------------------------------------------------------------------

def vandermonde(points, n):
    """(len(points) + 1, n): rows (1, p, ..., p^(n-1)) for each point, then (0, ..., 0, 1) for
    the point at infinity."""
    rows = [[Fraction(p) ** k for k in range(n)] for p in points]
    return rows + [[Fraction(0)] * (n - 1) + [Fraction(1)]]


def inverse(a):
    """The exact inverse of a square matrix of Fractions (Gauss-Jordan elimination)."""
    n = len(a)
    rows = [list(row) + [Fraction(int(i == k)) for k in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if rows[i][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for i in range(n):
            if i != col and rows[i][col] != 0:
                factor = rows[i][col]
                rows[i] = [v - factor * u for v, u in zip(rows[i], rows[col])]
    return [row[n:] for row in rows]


def transpose(a):
    return [list(column) for column in zip(*a)]


def transform_matrices(m, r, points):
    """(A^T, G, B^T) of F(m, r) for alpha - 1 = m + r - 2 finite points and infinity, as lists
    of Fractions: A^T (m, alpha), G (alpha, r), B^T (alpha, alpha)."""
    alpha = m + r - 1
    if len(points) != alpha - 1:
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} finite points, not {len(points)}")
    AT = transpose(vandermonde(points, m))
    G = vandermonde(points, r)
    BT = transpose(inverse(vandermonde(points, alpha)))
    for j in range(alpha):
        scale = max(abs(v) for v in BT[j])
        BT[j] = [v / scale for v in BT[j]]
        G[j] = [v * scale for v in G[j]]
    return AT, G, BT


class Transforms:
    """The matrices of F(M_TILE, r) as arrays of the backend: A^T, B^T in the working dtype,
    G in float64 (the weight transforms run in float64)."""

    _cache = {}

    def __init__(self, r):
        self.r, self.m = r, M_TILE
        self.alpha = self.m + r - 1
        self.exact = transform_matrices(self.m, r, POINTS[r])

    @classmethod
    def get(cls, r, dtype):
        key = (r, backend.name, backend.xp.dtype(dtype).name)
        if key not in cls._cache:
            t = cls(r)
            AT, G, BT = ([[float(v) for v in row] for row in mat] for mat in t.exact)
            t.AT = backend.asarray(AT, dtype=dtype)                # (m, alpha)
            t.A = t.AT.T.copy()                                    # (alpha, m)
            t.BT = backend.asarray(BT, dtype=dtype)                # (alpha, alpha)
            t.G = backend.asarray(G, dtype=backend.xp.float64)     # (alpha, r)
            t.GT = t.G.T.copy()                                    # (r, alpha)
            cls._cache[key] = t
        return cls._cache[key]


def tiles_count(OH, OW, m):
    """(TH, TW) = (ceil(OH / m), ceil(OW / m))."""
    return -(-OH // m), -(-OW // m)


def _array(buffers, name, shape, dtype, zeros=False):
    if buffers is None:
        return (backend.xp.zeros if zeros else backend.xp.empty)(shape, dtype=dtype)
    return buffers.get(name, shape, dtype, zeros)


# The three steps of a layer ----------------------------------------------------------------

def weight_transform(w, t, buffers=None):
    """U = G w G^T for each (o, c): w (O, C, r, r) -> U (alpha, alpha, O, C), computed in
    float64 and rounded once to the dtype of w (in `buffers`: the weights change every step, so
    their transforms are redone every step, into the same arrays)."""
    xp = backend.xp
    O, C, r, _ = w.shape
    a = t.alpha
    w64 = _array(buffers, "w64", (r, r, O, C), xp.float64)
    w64[...] = w.transpose(2, 3, 0, 1)                                           # (k, l, o, c)
    left = _array(buffers, "w_left", (a, r * O * C), xp.float64)
    xp.matmul(t.G, w64.reshape(r, -1), out=left)                                 # sum_k G[a, k] w[k, l]
    U64 = _array(buffers, "U64", (a, a, O * C), xp.float64)
    xp.matmul(t.G, left.reshape(a, r, O * C), out=U64)                           # (a, b, O*C): sum_l G[b, l] ...
    U = _array(buffers, "U", (a, a, O, C), w.dtype)
    U[...] = U64.reshape(a, a, O, C)
    return U


def weight_transform_adjoint(dU, t, buffers=None):
    """dw = G^T dU G for each (o, c), the adjoint of weight_transform: dU (alpha, alpha, O, C)
    -> (O, C, r, r), in float64 (in `buffers`, as weight_transform)."""
    xp = backend.xp
    a, _, O, C = dU.shape
    r = t.r
    dU64 = _array(buffers, "U64", (a, a * O * C), xp.float64)
    dU64[...] = dU.reshape(a, a * O * C)
    left = _array(buffers, "w_left", (r, a * O * C), xp.float64)
    xp.matmul(t.GT, dU64, out=left)                                              # sum_a G[a, k] dU[a, b]
    dw = _array(buffers, "w64", (r, r, O * C), xp.float64)
    xp.matmul(t.GT, left.reshape(r, a, O * C), out=dw)                           # (k, l, O*C)
    return dw.reshape(r, r, O, C).transpose(2, 3, 0, 1)


def input_transform(x, P, t, OH, OW, buffers, out=None):
    """V = B^T d B for every alpha x alpha tile d of the zero-padded input.

    x: (N, C, H, W) -> V: (alpha, alpha, C, T*N), tiles (th, tw, n) in that order.
    The padded input is (C, Hp, Wp, N) with Hp = TH*m + r - 1: the padding P on the top and
    left, and zeros past the right and bottom edges so that the last tiles are whole.
    """
    N, C, H, W = x.shape
    m, a = t.m, t.alpha
    TH, TW = tiles_count(OH, OW, m)
    Hp, Wp = TH * m + t.r - 1, TW * m + t.r - 1
    # one buffer per (P, H, W): another input of the padded shape would leave data in the border
    x_padded = _array(buffers, f"padded_{P}_{H}_{W}", (C, Hp, Wp, N), x.dtype, zeros=True)
    x_padded[:, P:P + H, P:P + W] = x.transpose(1, 2, 3, 0)
    d = _array(buffers, "tiles", (a, a, C, TH, TW, N), x.dtype)
    for i in range(a):
        for j in range(a):
            d[i, j] = x_padded[:, i:i + m * TH:m, j:j + m * TW:m]          # (C, TH, TW, N)
    half = _array(buffers, "tiles_half", (a, a * C * TH * TW * N), x.dtype)
    backend.xp.matmul(t.BT, d.reshape(a, -1), out=half)                     # B^T d: over i
    V = out if out is not None else _array(buffers, "tiles", (a, a, C * TH * TW * N), x.dtype)
    backend.xp.matmul(t.BT, half.reshape(a, a, -1), out=V)                  # (B^T d) B: over j
    return V.reshape(a, a, C, TH * TW * N)


def output_transform(M, t, N, OH, OW, buffers, out=None):
    """Y = A^T M A for every tile, scattered onto the output.

    M: (alpha, alpha, O, T*N) -> y: (O, OH, OW, N), a view into a fresh (O, TH*m, TW*m, N);
    with `out`, an (O, TH, m, TW, m, N) view (a slice of a larger batch's output), written there
    and None returned."""
    a, _, O, _ = M.shape
    m = t.m
    TH, TW = tiles_count(OH, OW, m)
    # M lives in "tiles_half" (tile_products): the two steps alternate between the work arrays
    half = _array(buffers, "tiles", (m, a * O * TH * TW * N), M.dtype)
    backend.xp.matmul(t.AT, M.reshape(a, -1), out=half)                     # A^T M: over a
    Y = _array(buffers, "tiles_half", (m, m, O * TH * TW * N), M.dtype)
    backend.xp.matmul(t.AT, half.reshape(m, a, -1), out=Y)                  # (A^T M) A: over b
    y = backend.xp.empty((O, TH, m, TW, m, N), dtype=M.dtype) if out is None else out
    y[...] = Y.reshape(m, m, O, TH, TW, N).transpose(2, 3, 0, 4, 1, 5)
    return None if out is not None else y.reshape(O, TH * m, TW * m, N)[:, :OH, :OW]


def output_transform_adjoint(dy, t, buffers, name="dy_tiles"):
    """dM = A dY A^T for every tile of dy, the adjoint of output_transform (the output's
    gradient cut into m x m tiles, zero past the edges).

    dy: (N, O, OH, OW) -> dM: (alpha, alpha, O, T*N)."""
    N, O, OH, OW = dy.shape
    m, a = t.m, t.alpha
    TH, TW = tiles_count(OH, OW, m)
    dy_padded = _array(buffers, f"dy_padded_{OH}_{OW}", (O, TH * m, TW * m, N), dy.dtype, zeros=True)
    dy_padded[:, :OH, :OW] = dy.transpose(1, 2, 3, 0)
    dY = _array(buffers, "dy_tiles", (m, m, O, TH, TW, N), dy.dtype)
    dY[...] = dy_padded.reshape(O, TH, m, TW, m, N).transpose(2, 4, 0, 1, 3, 5)
    half = _array(buffers, "tiles_half", (m, a, O * TH * TW * N), dy.dtype)
    backend.xp.matmul(t.A, dY.reshape(m, m, -1), out=half)                  # dY A^T: over j
    dM = _array(buffers, name, (a, a * O * TH * TW * N), dy.dtype)
    backend.xp.matmul(t.A, half.reshape(m, -1), out=dM)                     # A (dY A^T): over i
    return dM.reshape(a, a, O, TH * TW * N)


def tile_products(U, V, buffers, name="tiles_half"):
    """M[a, b] = U[a, b] V[a, b]: (alpha, alpha, O, C) x (alpha, alpha, C, T*N) -> (alpha, alpha, O, T*N)."""
    a, _, O, C = U.shape
    M = _array(buffers, name, (a * a, O, V.shape[-1]), V.dtype)
    backend.xp.matmul(U.reshape(a * a, O, C), V.reshape(a * a, C, -1), out=M)
    return M.reshape(a, a, O, -1)


def tile_products_adjoint(dM, V, out):
    """dU[a, b] = dM[a, b] V[a, b]^T, tile_products' adjoint in U, into `out` (alpha^2, O, C):
    dM (alpha, alpha, O, T*N), V (alpha, alpha, C, T*N)."""
    a2, O, C = out.shape
    backend.xp.matmul(dM.reshape(a2, O, -1), V.reshape(a2, C, -1).transpose(0, 2, 1), out=out)
    return out


def convolve(x, U, P, t, buffers, kept=None):
    """y = x conv w with U = G w G^T: x (N, C, H, W) -> y (N, O, OH, OW), stored (O, OH, OW, N).
    Returns (y, V); V, the transformed input tiles, is written into `kept` when given."""
    N, C, H, W = x.shape
    OH, OW = H + 2 * P - t.r + 1, W + 2 * P - t.r + 1
    V = input_transform(x, P, t, OH, OW, buffers, out=kept)
    M = tile_products(U, V, buffers)
    y = output_transform(M, t, N, OH, OW, buffers)
    return y.transpose(3, 0, 1, 2), V


def slice_size(N, C, O, OH, OW, t, itemsize, max_tile_bytes):
    """How many images of a batch of N go through at once so that their transformed tiles (of C
    inputs or O outputs, whichever is more) stay under max_tile_bytes: at least one."""
    TH, TW = tiles_count(OH, OW, t.m)
    per_image = t.alpha ** 2 * max(C, O) * TH * TW * itemsize
    return max(1, min(N, max_tile_bytes // per_image))


def convolve_in_chunks(x, U, P, t, buffers, max_tile_bytes):
    """convolve, a slice of the batch at a time, so that the transformed tiles of one slice stay
    under max_tile_bytes: the work arrays stay bounded whatever the batch, and a slice's tiles
    stay in the caches longer. Each slice's outputs go straight into their rows of y."""
    N, C, H, W = x.shape
    OH, OW = H + 2 * P - t.r + 1, W + 2 * P - t.r + 1
    O, m = U.shape[2], t.m
    n = slice_size(N, C, O, OH, OW, t, x.itemsize, max_tile_bytes)
    if n == N:
        return convolve(x, U, P, t, buffers)[0]
    TH, TW = tiles_count(OH, OW, m)
    y = backend.xp.empty((O, TH, m, TW, m, N), dtype=x.dtype)
    for n0 in range(0, N, n):
        piece = x[n0:n0 + n]
        V = input_transform(piece, P, t, OH, OW, buffers)
        output_transform(tile_products(U, V, buffers), t, len(piece), OH, OW, buffers, out=y[..., n0:n0 + n])
    return y.reshape(O, TH * m, TW * m, N)[:, :OH, :OW].transpose(3, 0, 1, 2)


def weight_gradient_in_chunks(x, dy, P, t, buffers, max_tile_bytes):
    """dU = sum over the tiles of dM V^T, V rebuilt from x and dM from dy a slice of the batch
    at a time (as convolve_in_chunks): x (N, C, H, W), dy (N, O, OH, OW) -> (alpha^2, O, C)."""
    (N, C), (O, OH, OW), a = x.shape[:2], dy.shape[1:], t.alpha
    n = slice_size(N, C, O, OH, OW, t, x.itemsize, max_tile_bytes)
    dU, part = _array(buffers, "U", (a * a, O, C), dy.dtype), _array(buffers, "dU_slice", (a * a, O, C), dy.dtype)
    dU[...] = 0
    for n0 in range(0, N, n):
        V = input_transform(x[n0:n0 + n], P, t, OH, OW, buffers)                 # in "tiles"
        dM = output_transform_adjoint(dy[n0:n0 + n], t, buffers, "dy_tiles")
        dU += tile_products_adjoint(dM, V, part)
    return dU


# The layer's algorithm -----------------------------------------------------------------------

class WinogradConvolution:
    """Conv2d's forward and backward by Winograd's F(4x4, r x r) (r = 3 or 5).

    While training, the transformed input tiles V (2.25 times the input at 28x28, 6x6 tiles for
    4x4 outputs) are kept for the weight gradient up to `max_kept_bytes`; past it, x is kept
    instead and V rebuilt from it there. Never both: x is needed only for that.
    Whatever keeps no V goes through the batch in slices whose tiles stay under `max_tile_bytes`
    (convolve_in_chunks, weight_gradient_in_chunks): sampling, and in training the layers that
    rebuild V, forward and backward, so that the work arrays shared by all the convolutions stay
    near that size whatever the batch. The U-Net's forward pass of 256 images at 28x28 peaked at
    1156 MiB whole and 793 MiB in slices of 16 MB, at the same speed; its training step at batch
    64 at 961 MiB with those layers whole and 879 MiB in slices (the shared work arrays 188 ->
    107 MiB), at a speed that alternating processes could not tell apart (benchmarks/README.md)."""

    # 16 MB: the U-Net's step at batch 32 keeps the V of every layer but one (96 channels at
    # 28x28); at batch 64 the four layers whose V passes 16 MB rebuild it, 950 MiB peak against
    # 982 at 32 MB, at a speed the bench could not tell apart (benchmarks/README.md)
    max_kept_bytes = 16 * 2**20
    max_tile_bytes = 16 * 2**20     # the tiles of a slice of the batch, at most, where no V is kept

    def forward(self, layer, x):
        t = Transforms.get(layer.KH, x.dtype)
        U = weight_transform(layer.w, t, layer.work_buffers)
        N, C, H, W = x.shape
        OH, OW = H + 2 * layer.P - t.r + 1, W + 2 * layer.P - t.r + 1
        TH, TW = tiles_count(OH, OW, t.m)
        keep = layer.training and t.alpha ** 2 * C * TH * TW * N * x.itemsize <= self.max_kept_bytes
        if keep:
            kept = layer.buffers.get("V", (t.alpha, t.alpha, C * TH * TW * N), x.dtype)
            y, self.V = convolve(x, U, layer.P, t, layer.work_buffers, kept)
        else:
            y, self.V = convolve_in_chunks(x, U, layer.P, t, layer.work_buffers, self.max_tile_bytes), None
        y += layer.b.reshape(1, -1, 1, 1)
        # backward needs x only to rebuild V; sampling keeps nothing for a backward pass
        layer.x = x if layer.training and not keep else None
        return y

    def backward(self, layer, dy):
        t = Transforms.get(layer.KH, dy.dtype)
        P, r, buffers = layer.P, t.r, layer.work_buffers
        layer.db += dy.sum(axis=(0, 2, 3))                                      # dL/db = sum over n, oh, ow
        # dL/dw: the adjoint of the forward, through the tiles of x: dU = sum of dM V^T over the tiles
        a, (O, C) = t.alpha, layer.w.shape[:2]
        if self.V is None:
            dU = weight_gradient_in_chunks(layer.x, dy, P, t, buffers, self.max_tile_bytes)
        else:
            dM = output_transform_adjoint(dy, t, buffers, "tiles")             # where V is not: "tiles"
            dU = tile_products_adjoint(dM, self.V, _array(buffers, "U", (a * a, O, C), dy.dtype))
        dw = _array(buffers, "dw", layer.dw.shape, layer.dw.dtype)
        dw[...] = weight_transform_adjoint(dU.reshape(a, a, O, C), t, buffers)   # rounded once, then summed
        layer.dw += dw
        self.V = None
        # dL/dx: the convolution of dy with the kernel turned by 180 degrees, channels swapped,
        # padded by r - 1 - P (as in Im2colConvolution.backward)
        w_turned = layer.w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)              # (C, O, r, r)
        return convolve_in_chunks(dy, weight_transform(w_turned, t, buffers), r - 1 - P, t, buffers,
                                  self.max_tile_bytes)
