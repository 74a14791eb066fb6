"""The full-precision reference for "non-encrypted training": multinomial logistic regression, exact softmax.

scikit-learn's ``LogisticRegression`` (L-BFGS, trained to a gradient tolerance of 1e-6) on the standardised
backbone features, with the L2 strength C chosen on the validation split from a fixed grid. The features are
standardised as the encrypted trainer's are (same mean and standard deviation), without its whitening, so that
the reference does not depend on how the encrypted trainer is set up.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .head import FeatureScaler, FeatureSplits

# Half-decades from 1e-2 to 1e3: the validation optimum lies inside on both shipped datasets.
C_GRID = tuple(float(c) for c in np.logspace(-2, 3, 11))


def logistic_reference(features: FeatureSplits, grid=C_GRID) -> dict:
    """Fit one model per C on train, keep the best on validation (ties: the smaller C); its test accuracy."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    scaler = FeatureScaler.fit(features.train[0])
    x, x_val, x_test = (scaler.transform(split[0])[:, :-1] for split in (features.train, features.val, features.test))
    scores, best, start_from = {}, None, None
    for c in sorted(grid):
        # Warm-started from the previous C's optimum (the same unique optimum, reached in far fewer L-BFGS steps).
        model = LogisticRegression(C=c, max_iter=10000, tol=1e-6, warm_start=True)
        if start_from is not None:
            model.coef_, model.intercept_ = start_from.coef_.copy(), start_from.intercept_.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # tiny splits; reported as converged=False
            model.fit(x, features.train[1])
        start_from = model
        scores[c] = 100.0 * model.score(x_val, features.val[1])
        if best is None or scores[c] > scores[best[0]]:
            best = (c, model)
    c, model = best
    return {
        "method": "scikit-learn LogisticRegression (L-BFGS, exact softmax, L2, tol 1e-6) on standardised features",
        "C": c,
        "val_acc": scores[c],
        "test_acc": 100.0 * model.score(x_test, features.test[1]),
        "converged": bool(model.n_iter_.max() < model.max_iter),
        "val_acc_per_C": scores,
        "seconds": time.perf_counter() - start,
    }
