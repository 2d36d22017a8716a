"""DFR, deep feature reweighting (Kirichenko et al., 2022; ``dfr_evaluate_spurious.py``), SPEC §6.

Last-layer retraining on a small group-balanced set: L1 logistic regression (liblinear) on standardised
penultimate features. ``C`` is tuned on worst-group accuracy: the set is split in two halves
(stratified by group), a model is fitted on a group-balanced subsample of the first half and scored on
the second. Then 20 models are fitted on fresh group-balanced subsamples of the whole set and their
coefficients and intercepts are averaged. The standardisation is folded back into the new head's
weight and bias, so the corrected model is the student with a new last layer.

Deviation from the reference, on purpose: the final standardisation is fitted on the balanced set
itself (SPEC: "standardised penultimate features of the small group-balanced set"), not on the
poisoned training features, so that the tuned ``C`` means the same thing in tuning and in the final fit.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch
from torch import nn

from didae_xai.correct.base import CorrectionData, CorrectionResult, Corrector, check_groups, features_of, set_head
from didae_xai.metrics.groups import group_accuracies

C_OPTIONS = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def _l1_logistic(C: float, seed: int, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    # scikit-learn 1.8 deprecates ``penalty`` in favour of ``l1_ratio``; older versions need ``penalty``.
    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        kwargs = {"l1_ratio": 1.0}
    else:  # pragma: no cover - scikit-learn < 1.8
        kwargs = {"penalty": "l1"}
    return LogisticRegression(C=C, solver="liblinear", random_state=seed, max_iter=max_iter, **kwargs)


def fit_linear(x: np.ndarray, y: np.ndarray, num_classes: int, C: float, seed: int = 0, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """L1 logistic regression; returns logit weights (num_classes, D) and biases (num_classes,).

    Two classes: the single liblinear model ``w`` becomes the symmetric head ``[-w/2, w/2]`` (the same
    probabilities). More classes: one-vs-rest models, one row each.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear convergence warnings on tiny sets
        if num_classes == 2:
            clf = _l1_logistic(C, seed, max_iter).fit(x, y)
            w, b = clf.coef_[0], clf.intercept_[0]
            return np.stack([-w / 2, w / 2]), np.array([-b / 2, b / 2])
        rows = [_l1_logistic(C, seed, max_iter).fit(x, (y == c).astype(int)) for c in range(num_classes)]
    return np.stack([r.coef_[0] for r in rows]), np.array([r.intercept_[0] for r in rows])


def _balanced_subsample(groups: np.ndarray, rng: np.random.Generator, n_groups: int) -> np.ndarray:
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]
    m = min(len(idx) for idx in members)
    return np.concatenate([rng.choice(idx, m, replace=False) for idx in members])


class DFR(Corrector):
    """Deep feature reweighting: a new last layer fitted on a small group-balanced set.

    Args:
        C_options: inverse L1 strengths tried (the reference's seven values).
        n_retrains: balanced refits whose coefficients are averaged (20).
        source: ``"dfr"`` uses ``CorrectionData.dfr`` (the small balanced set); ``"val"`` uses the
            validation split (DFR^Val_Tr, subsampled to balance).
        seed: seeds the splits and subsamples.
    """

    name = "dfr"
    labels_used = ("y", "group")

    def __init__(self, C_options=C_OPTIONS, n_retrains: int = 20, source: str = "dfr", seed: int = 0,
                 max_iter: int = 100, n_groups: int = 4):
        if not C_options:
            raise ValueError("C_options must hold at least one value.")
        if source not in ("dfr", "val"):
            raise ValueError(f"source must be 'dfr' or 'val', got {source!r}.")
        if n_retrains < 1:
            raise ValueError(f"n_retrains must be at least 1, got {n_retrains}.")
        self.C_options = tuple(float(c) for c in C_options)
        self.n_retrains, self.source, self.seed = int(n_retrains), source, int(seed)
        self.max_iter, self.n_groups = int(max_iter), int(n_groups)

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        from sklearn.preprocessing import StandardScaler

        if self.source == "dfr":
            if data.dfr is None:
                raise ValueError("DFR needs the small group-balanced set: pass CorrectionData(dfr=...) or use DFR(source='val').")
            dataset = data.dfr
        else:
            dataset = data.val
        min_count = 2 if len(self.C_options) > 1 else 1  # each group needs a member in both tuning halves
        counts = check_groups(dataset, self.name, self.n_groups, min_count=min_count)
        num_classes = model.head.out_features
        x = features_of(model, dataset).double().numpy()
        y = dataset.y.numpy()
        groups = dataset.groups.numpy()
        rng = np.random.default_rng(self.seed)

        # 1. Tune C on worst-group accuracy: fit on a balanced half, score on the other half.
        scores = {}
        if len(self.C_options) > 1:
            fit_idx, score_idx = [], []
            for g in range(self.n_groups):
                idx = rng.permutation(np.flatnonzero(groups == g))
                fit_idx.append(idx[: len(idx) // 2])
                score_idx.append(idx[len(idx) // 2 :])
            fit_idx, score_idx = np.concatenate(fit_idx), np.concatenate(score_idx)
            fit_idx = fit_idx[_balanced_subsample(groups[fit_idx], rng, self.n_groups)]
            scaler = StandardScaler().fit(x[fit_idx])
            for C in self.C_options:
                w, b = fit_linear(scaler.transform(x[fit_idx]), y[fit_idx], num_classes, C, self.seed, self.max_iter)
                pred = (scaler.transform(x[score_idx]) @ w.T + b).argmax(1)
                accs = group_accuracies(torch.as_tensor(pred), torch.as_tensor(y[score_idx]),
                                        torch.as_tensor(groups[score_idx] % 2), self.n_groups)
                scores[C] = (min(accs.values()), sum(accs.values()) / len(accs))
            best_C = max(self.C_options, key=lambda c: scores[c])  # WGA, then AGA; first wins ties
        else:
            best_C = self.C_options[0]

        # 2. Average the coefficients of n_retrains fits on balanced subsamples of the whole set.
        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
        ws, bs = [], []
        for _ in range(self.n_retrains):
            idx = _balanced_subsample(groups, rng, self.n_groups)
            w, b = fit_linear(xs[idx], y[idx], num_classes, best_C, self.seed, self.max_iter)
            ws.append(w)
            bs.append(b)
        w, b = np.mean(ws, axis=0), np.mean(bs, axis=0)

        # 3. Fold the standardisation into a new head: w . (h - m) / s + b.
        weight = w / scaler.scale_
        bias = b - weight @ scaler.mean_
        head = nn.Linear(x.shape[1], num_classes, bias=True)
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        set_head(model, head.to(next(model.head.parameters()).device))
        record = {
            "trained": "new head (logistic regression)",
            "source": self.source if self.source == "val" else "dfr",
            "set_size": len(dataset),
            "group_counts": counts.tolist(),
            "balanced_subsample": int(min(counts.tolist())) * self.n_groups,
            "C": best_C,
            "tuning": {str(c): {"wga": s[0], "aga": s[1]} for c, s in scores.items()},
            "n_retrains": self.n_retrains,
            "nonzero_weights": int((np.abs(w).sum(0) > 0).sum()),
            "scaler": "fitted on the balanced set",
        }
        return CorrectionResult(model, record)
