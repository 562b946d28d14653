"""The losses: the mean squared error of Algorithm 1, and the classifier's cross-entropy.
Each `backward()` gives the gradient of the loss with respect to the prediction."""

from .. import backend


class MSELoss:
    """loss = mean((y - target)^2) over every element; backward gives dloss/dy."""

    def forward(self, y, target):
        self.diff = y - target
        return (self.diff * self.diff).mean()

    @staticmethod
    def difference(y_plus, y_minus, target):
        """loss(y_plus) - loss(y_minus), factored as mean((y+ - y-)(y+ + y- - 2 target)) so that
        the finite differences of the gradient checks lose no digits to cancellation."""
        return ((y_plus - y_minus) * (y_plus + y_minus - 2 * target)).mean()

    def backward(self):
        return self.diff * (2 / self.diff.size)     # d/dy mean((y - target)^2) = 2 (y - target) / size


class SoftmaxCrossEntropy:
    """loss = -(1/N) sum_n log softmax(z_n)[label_n], the classifier's loss; backward gives dloss/dz.

    z: (N, K) logits   labels: (N,) integers in [0, K)   loss: a scalar
    log softmax(z)_k = (z_k - m) - log sum_j exp(z_j - m) with m = max_j z_j: every exponent is
    at most 0, so exp never overflows, and the largest term of the sum is 1, so log never sees 0.
    """

    @staticmethod
    def log_softmax(z):
        """log softmax over the last axis, shifted by the row maximum (see above). (N, K) -> (N, K)"""
        xp = backend.xp
        shifted = z - z.max(axis=-1, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))

    def forward(self, z, labels):
        log_p = self.log_softmax(z)                                       # (N, K)
        self.p = backend.xp.exp(log_p)                                    # softmax(z), for backward
        self.labels = labels
        return -log_p[backend.xp.arange(len(labels)), labels].mean()

    def difference(self, z_plus, z_minus, labels):
        """loss(z_plus) - loss(z_minus), for the gradient checks (leaves the cached p alone)."""
        rows = backend.xp.arange(len(labels))
        return (self.log_softmax(z_minus)[rows, labels] - self.log_softmax(z_plus)[rows, labels]).mean()

    def backward(self):
        dz = self.p.copy()                                                # dloss/dz = (softmax(z) - onehot(label)) / N
        dz[backend.xp.arange(len(self.labels)), self.labels] -= 1
        return dz / len(self.labels)
