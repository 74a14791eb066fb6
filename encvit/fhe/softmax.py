"""A polynomial softmax: the one function of the head that CKKS cannot evaluate exactly.

Softmax sums to one and is the gradient of log-sum-exp, a convex function: that is why gradient descent on
cross-entropy is stable. The polynomial used here keeps both properties; softmax's shift-invariance is used by
working on centred logits u (sum_k u_k = 0):

    p_k(u) = 1/K + a u_k + b (u_k^2 - mean_j u_j^2) + c (u_k^3 - mean_j u_j^3),

the gradient (projected onto centred logits) of phi(u) = sum_k (a u_k^2 / 2 + b u_k^3 / 3 + c u_k^4 / 4), which
is convex when b^2 <= 3 a c. Its outputs sum to exactly one. ``PolySoftmax.fit`` picks a, b, c by least squares
against softmax on centred logits drawn uniformly from [-radius, radius]^K, under the convexity constraint.

Range. For K = 10 the default radius 2 gives a largest error of about 0.12 in a probability (``max_error``);
beyond a radius of about 2.5 the unconstrained fit would stop being convex, and the constraint takes over. A
degree-2 fit (c = 0) would cost one level less, but its loss is not convex: logits below about -1 make training
diverge. With the convex cubic, training stops pushing a confident sample's logits apart at a margin of about 3.5
(``fixed_point_margin``), a little outside the fitted range, where the signal is still a convex loss's gradient,
so logits stay bounded. Features are standardised and divided by sqrt(d), so that logits start near zero.

On ciphertexts it costs three levels (square, cube, and a masked sum over classes) and no division.
The trainers feed z itself, not z - mean(z): with the class mean of W starting at zero it stays zero, because
P - Y sums to zero over the classes, so z is centred at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.errors import ConfigError

DEFAULT_RADIUS = 2.0


def softmax(z: np.ndarray) -> np.ndarray:
    """The exact softmax over the last axis."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class ExactSoftmax:
    """The exact softmax, callable like `PolySoftmax` (plaintext comparisons only: CKKS cannot evaluate it)."""

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return softmax(z)


def _centred_samples(num_classes: int, radius: float, samples: int, seed: int) -> np.ndarray:
    u = np.random.default_rng(seed).uniform(-radius, radius, size=(samples, num_classes))
    return u - u.mean(axis=1, keepdims=True)


@dataclass(frozen=True)
class PolySoftmax:
    """p_k = 1/K + a z_k + b (z_k^2 - mean z^2) + c (z_k^3 - mean z^3): a convex-loss softmax for centred logits."""

    num_classes: int
    a: float
    b: float
    c: float
    radius: float

    @classmethod
    def fit(cls, num_classes: int, radius: float = DEFAULT_RADIUS, samples: int = 20000, seed: int = 0) -> PolySoftmax:
        """Least-squares a, b, c on centred logits uniform in [-radius, radius]^K, constrained to b^2 <= 3ac."""
        if num_classes < 2:
            raise ConfigError(f"a softmax head needs at least 2 classes, got {num_classes}")
        u = _centred_samples(num_classes, radius, samples, seed)
        basis = np.stack([u, u**2 - (u**2).mean(1, keepdims=True), u**3 - (u**3).mean(1, keepdims=True)])
        target = softmax(u) - 1.0 / num_classes
        basis, target = basis.reshape(3, -1).T, target.ravel()
        (a, b, c), *_ = np.linalg.lstsq(basis, target, rcond=None)
        if not (a > 0 and c >= 0 and b * b <= 3 * a * c):
            # The best convex fit lies on the boundary b^2 = 3ac: theta = a (1, +-sqrt(3t), t), one scale per t.
            gram, moment = basis.T @ basis, basis.T @ target
            best = None
            for t in np.geomspace(1e-4, 10.0, 4000):
                for sign in (1.0, -1.0):
                    v = np.array([1.0, sign * np.sqrt(3 * t), t])
                    scale = max(float(v @ moment / (v @ gram @ v)), 0.0)
                    loss = scale * scale * float(v @ gram @ v) - 2 * scale * float(v @ moment)
                    if best is None or loss < best[0]:
                        best = (loss, scale, sign * scale * np.sqrt(3 * t) * (1 - 1e-9), scale * t)
            _, a, b, c = best
        return cls(num_classes, float(a), float(b), float(c), float(radius))

    @property
    def convex(self) -> bool:
        """Whether the implied loss is convex (a + 2 b u + 3 c u^2 >= 0 for every u)."""
        return self.a > 0 and self.c >= 0 and self.b**2 <= 3 * self.a * self.c

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """The polynomial on logits `z` of shape (n, K)."""
        z2, z3 = z**2, z**3
        return (
            1.0 / self.num_classes
            + self.a * z
            + self.b * (z2 - z2.mean(-1, keepdims=True))
            + self.c * (z3 - z3.mean(-1, keepdims=True))
        )

    def apply(self, logits: list) -> list:
        """The polynomial on a list of K per-class values that support +, -, * (numpy arrays or CKKSVectors)."""
        # b z^2 + c z^3 = z^2 (b + c z): one product less per class than computing z^3 separately
        terms = [(z * z) * (z * self.c + self.b) for z in logits]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        mean = total * (1.0 / self.num_classes)
        return [z * self.a + (t - mean) + 1.0 / self.num_classes for z, t in zip(logits, terms, strict=False)]

    def max_error(self, radius: float | None = None, samples: int = 20000, seed: int = 1) -> float:
        """The largest |p - softmax| over centred logits uniform in [-radius, radius]^K."""
        u = _centred_samples(self.num_classes, self.radius if radius is None else radius, samples, seed)
        return float(np.abs(self(u) - softmax(u)).max())

    def fixed_point_margin(self) -> float:
        """The logit margin m at which a confident sample's error P - Y is smallest.

        Logits m for the true class and -m/(K-1) for the others: training stops pushing them apart near m.
        """
        k = self.num_classes
        margins = np.linspace(0.0, 20.0, 20001)
        z = np.zeros((len(margins), k))
        z[:, 0] = margins
        z[:, 1:] = -margins[:, None] / (k - 1)
        target = np.eye(k)[0]
        return float(margins[np.argmin(np.abs(self(z) - target).sum(axis=1))])

    def describe(self) -> dict:
        """Coefficients, range and error, JSON-ready."""
        return {
            "form": "1/K + a z_k + b (z_k^2 - mean z^2) + c (z_k^3 - mean z^3)",
            "num_classes": self.num_classes,
            "a": self.a,
            "b": self.b,
            "c": self.c,
            "fit_radius": self.radius,
            "convex": self.convex,
            "max_error_on_radius": self.max_error(),
            "fixed_point_margin": self.fixed_point_margin(),
        }
