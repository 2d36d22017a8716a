"""CFKD, counterfactual knowledge distillation (SPEC §6; peal-didae.md §6), one iteration.

1. From correctly classified training samples (student prediction = label), balanced over classes,
   generate counterfactuals with any explainer (``explainer.explain(images) ->
   CounterfactualExplanation``: DiDAE or the gradient baselines DiME, FastDiME and ACE, so that Gain compares
   explainers).
2. A teacher gives each counterfactual a verdict (:mod:`didae_xai.correct.teachers`).
3. Every ``"false"`` counterfactual (a Clever-Hans flip) joins training with the factual's *original*
   label (``"true"`` ones only with ``use_true_counterfactuals``, labelled with the target).
4. Retrain: each batch draws half counterfactuals and half real training data (``mixing_ratio``),
   class-balanced within each half; the last layer only for students with a frozen body (FM probes),
   all weights for end-to-end students (ResNet). The same is done on validation samples to build a
   counterfactual validation set; the epoch with the best mean of the accuracies on the original
   validation split and on the counterfactual validation set is kept (original validation alone
   when no validation counterfactual was "false").
"""

from __future__ import annotations

import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from didae_xai.correct.base import (
    CorrectionData,
    CorrectionResult,
    Corrector,
    as_input,
    device_of,
    features_of,
    predict,
    resolve_head_only,
)
from didae_xai.correct.loop import balanced_weights, default_config, train_loop
from didae_xai.correct.teachers import FALSE, TRUE, Teacher, check_explanation
from didae_xai.data.base import ImageDataset
from didae_xai.models.training import TrainConfig


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 in [0, 255] (the :class:`ImageDataset` convention)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def select_factuals(pred: torch.Tensor, y: torch.Tensor, max_n: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of correctly classified samples, at most ``max_n``, as balanced over classes as possible."""
    gen = torch.Generator().manual_seed(seed)
    classes = y.unique().tolist()
    pools = {c: torch.nonzero((pred == y) & (y == c)).flatten() for c in classes}
    pools = {c: p[torch.randperm(len(p), generator=gen)] for c, p in pools.items()}
    if max_n is None:
        chosen = list(pools.values())
    else:
        quota, chosen, left = {c: 0 for c in classes}, [], max_n
        while left > 0:  # fill round-robin so a small class does not waste the budget
            open_classes = [c for c in classes if quota[c] < len(pools[c])]
            if not open_classes:
                break
            for c in open_classes:
                if left == 0:
                    break
                quota[c] += 1
                left -= 1
        chosen = [pools[c][: quota[c]] for c in classes]
    idx = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    return idx.sort().values


def counterfactual_dataset(
    dataset: ImageDataset,
    indices: torch.Tensor,
    explainer,
    teacher: Teacher,
    batch_size: int = 64,
    use_true: bool = False,
    progress: bool = True,
    name: str = "counterfactuals",
) -> tuple[ImageDataset | None, dict]:
    """Explain ``dataset[indices]``, ask the teacher, keep the "false" counterfactuals with the original label.

    Returns:
        The counterfactual dataset (``None`` if nothing was kept) and stats: ``n_factuals``,
        ``n_counterfactuals``, ``verdicts`` (counts), ``feedback_accuracy`` = #true / (#true + #false),
        ``sources`` (factual index into ``dataset``, atom name, verdict) of every kept image, and
        ``explain_seconds``. Kept images have ``a = -1`` (their confounder is unknown) and ids
        ``"<factual id>/cf:<atom>"``.
    """
    images, labels, ids, sources = [], [], [], []
    counts: Counter = Counter()
    n_cf, seconds = 0, 0.0
    for start in tqdm(range(0, len(indices), batch_size), desc=f"CFKD {name}", disable=not progress):
        idx = indices[start : start + batch_size]
        x = dataset.images[idx].float() / 255.0
        t0 = time.perf_counter()
        explanation = explainer.explain(x)
        seconds += time.perf_counter() - t0
        y = dataset.y[idx]
        n, k = check_explanation(explanation, y)
        if n != len(idx):
            raise ValueError(f"The explainer returned {n} factuals for {len(idx)} inputs.")
        if tuple(explanation.counterfactuals.shape[2:]) != tuple(dataset.images.shape[1:]):
            raise ValueError(
                f"The explainer's counterfactuals are shaped {tuple(explanation.counterfactuals.shape[2:])}, "
                f"the training images {tuple(dataset.images.shape[1:])}."
            )
        verdicts = teacher.verdicts(explanation, y)
        if len(verdicts) != n * k:
            raise ValueError(f"The teacher returned {len(verdicts)} verdicts for {n * k} counterfactuals.")
        counts.update(verdicts)
        n_cf += n * k
        for flat, verdict in enumerate(verdicts):
            if verdict == FALSE or (use_true and verdict == TRUE):
                i, j = divmod(flat, k)
                label = y[i] if verdict == FALSE else explanation.target[i]
                images.append(to_uint8(explanation.counterfactuals[i, j]))
                labels.append(int(label))
                src = int(idx[i])
                atom = str(explanation.atom_names[j])
                ids.append(f"{dataset.ids[src]}/cf:{atom}")
                sources.append({"index": src, "atom": atom, "verdict": verdict})
    n_true, n_false = counts.get(TRUE, 0), counts.get(FALSE, 0)
    stats = {
        "n_factuals": int(len(indices)),
        "n_counterfactuals": n_cf,
        "verdicts": dict(counts),
        "feedback_accuracy": n_true / (n_true + n_false) if n_true + n_false else None,
        "n_kept": len(images),
        "sources": sources,
        "explain_seconds": seconds,
    }
    if not images:
        return None, stats
    cf = ImageDataset(
        images=torch.stack(images),
        y=torch.tensor(labels, dtype=torch.long),
        a=torch.full((len(images),), -1, dtype=torch.long),
        split=torch.full((len(images),), int(dataset.split[0]) if len(dataset.split) else 0, dtype=torch.long),
        ids=ids,
        name=name,
    )
    return cf, stats


class CFKD(Corrector):
    """Counterfactual knowledge distillation with any counterfactual explainer and any teacher.

    Args:
        explainer: explains the (uncorrected) student: ``explain(images in [0, 1]) ->
            CounterfactualExplanation`` (default target: the other class).
        teacher: an :class:`~didae_xai.correct.teachers.OracleTeacher`, a
            :class:`~didae_xai.correct.teachers.PreclusteredTeacher` or any object with ``verdicts``.
        head_only: retrain only the last layer; ``None`` (default): head only for students with a frozen
            body (FM probes), all weights for end-to-end students (ResNet).
        config: the recipe (default :data:`~didae_xai.correct.loop.HEAD_CONFIG` / ``FULL_CONFIG``).
        max_factuals: training factuals explained (balanced over classes); ``None``: all correct ones.
        max_val_factuals: validation factuals explained for the counterfactual validation set
            (0 disables it; selection then uses the original validation accuracy only).
        explain_batch_size: factuals per ``explain`` call.
        mixing_ratio: share of counterfactuals in every batch (0.5).
        use_true_counterfactuals: also train on "true" counterfactuals, labelled with their target.
        seed: seeds the factual choice (training uses ``config.seed``).

    The record holds ``n_counterfactuals``, ``verdicts``, ``feedback_accuracy``, ``n_train_counterfactuals``
    (the "false" ones kept) and ``train_counterfactuals_by_atom`` (which atoms they came from), ``epochs``
    and ``selected_epoch``; ``result.artifacts`` holds
    ``counterfactual_dataset`` and ``val_counterfactual_dataset`` (also kept on the corrector as
    ``counterfactual_dataset_`` / ``val_counterfactual_dataset_``).
    """

    name = "cfkd"

    def __init__(
        self,
        explainer,
        teacher: Teacher,
        head_only: bool | None = None,
        config: TrainConfig | None = None,
        max_factuals: int | None = 128,
        max_val_factuals: int = 32,
        explain_batch_size: int = 64,
        mixing_ratio: float = 0.5,
        use_true_counterfactuals: bool = False,
        seed: int = 0,
        progress: bool = True,
    ):
        if explainer is None or not callable(getattr(explainer, "explain", None)):
            raise ValueError("CFKD needs an explainer with explain(images) -> CounterfactualExplanation (e.g. DiDAE).")
        if teacher is None or not callable(getattr(teacher, "verdicts", None)):
            raise ValueError("CFKD needs a teacher with verdicts(explanation, labels) (OracleTeacher or PreclusteredTeacher).")
        if not 0.0 < mixing_ratio < 1.0:
            raise ValueError(f"mixing_ratio must be in (0, 1), got {mixing_ratio}.")
        if max_factuals is not None and max_factuals < 1:
            raise ValueError(f"max_factuals must be positive or None, got {max_factuals}.")
        self.explainer, self.teacher = explainer, teacher
        self.head_only, self.config = head_only, config
        self.max_factuals, self.max_val_factuals = max_factuals, int(max_val_factuals)
        self.explain_batch_size, self.mixing_ratio = int(explain_batch_size), float(mixing_ratio)
        self.use_true = use_true_counterfactuals
        self.seed, self.progress = int(seed), progress
        self.counterfactual_dataset_: ImageDataset | None = None
        self.val_counterfactual_dataset_: ImageDataset | None = None

    @property
    def labels_used(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("y",) + tuple(getattr(self.teacher, "labels_used", ("teacher",)))

    def _correct(self, model: nn.Module, data: CorrectionData) -> CorrectionResult:
        if callable(getattr(self.teacher, "infer_num_classes", None)):
            teacher_classes = self.teacher.infer_num_classes(as_input(data.train.images[:1]))
        else:
            teacher_classes = getattr(self.teacher, "num_classes", None)
        if teacher_classes is not None and teacher_classes != model.head.out_features:
            raise ValueError(
                f"The teacher predicts {teacher_classes} classes but the student {model.head.out_features}; "
                "the teacher must be a classifier of the same task with the same classes."
            )
        head_only = resolve_head_only(model, self.head_only)
        cfg = default_config(head_only, self.config)

        # 1-3. Counterfactuals of correctly classified samples, verdicts, the counterfactual datasets.
        train_idx = select_factuals(predict(model, data.train), data.train.y, self.max_factuals, self.seed)
        cf_train, stats = counterfactual_dataset(data.train, train_idx, self.explainer, self.teacher,
                                                 self.explain_batch_size, self.use_true, self.progress, "counterfactuals")
        cf_val, val_stats = None, None
        if self.max_val_factuals > 0:
            val_idx = select_factuals(predict(model, data.val), data.val.y, self.max_val_factuals, self.seed + 1)
            cf_val, val_stats = counterfactual_dataset(data.val, val_idx, self.explainer, self.teacher,
                                                       self.explain_batch_size, False, self.progress, "val counterfactuals")
        self.counterfactual_dataset_, self.val_counterfactual_dataset_ = cf_train, cf_val
        record = {
            "trained": "head" if head_only else "all weights",
            "n_factuals": stats["n_factuals"],
            "n_counterfactuals": stats["n_counterfactuals"],
            "verdicts": stats["verdicts"],
            "feedback_accuracy": stats["feedback_accuracy"],
            "n_train_counterfactuals": stats["n_kept"],
            "train_counterfactuals_by_atom": dict(Counter(src["atom"] for src in stats["sources"])),
            "n_val_counterfactuals": 0 if cf_val is None else len(cf_val),
            "val_verdicts": None if val_stats is None else val_stats["verdicts"],
            "explain_seconds": stats["explain_seconds"] + (val_stats["explain_seconds"] if val_stats else 0.0),
            "mixing_ratio": self.mixing_ratio,
        }
        artifacts = {"counterfactual_dataset": cf_train, "val_counterfactual_dataset": cf_val, "sources": stats["sources"]}
        if cf_train is None:
            record.update(epochs=0, selected_epoch=None, skipped="no 'false' counterfactual: nothing to distil")
            return CorrectionResult(model, record, artifacts)

        # 4. Retrain on half counterfactuals, half real data.
        n_real = len(data.train)
        device = device_of(model)
        y = torch.cat([data.train.y, cf_train.y])
        if head_only:
            model.head.requires_grad_(True)
            module = model.head
            inputs = torch.cat([features_of(model, data.train), features_of(model, cf_train)])
            val_sets = [(features_of(model, data.val), data.val.y)]
            if cf_val is not None:
                val_sets.append((features_of(model, cf_val), cf_val.y))

            def accuracy(x: torch.Tensor, labels: torch.Tensor) -> float:
                with torch.no_grad():
                    return (module(x.to(device)).argmax(1).cpu() == labels).float().mean().item()
        else:
            module = model
            inputs = torch.cat([data.train.images, cf_train.images])
            val_sets = [(data.val.images, data.val.y)] + ([(cf_val.images, cf_val.y)] if cf_val is not None else [])

            def accuracy(x: torch.Tensor, labels: torch.Tensor) -> float:
                return (predict(model, x) == labels).float().mean().item()

        weights = torch.cat([
            (1.0 - self.mixing_ratio) * balanced_weights(data.train.y),
            self.mixing_ratio * balanced_weights(cf_train.y),
        ])
        scores: list[list[float]] = []

        def validate() -> float:
            accs = [accuracy(x, labels) for x, labels in val_sets]
            scores.append(accs)
            return sum(accs) / len(accs)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(module(as_input(inputs[idx]).to(device)), y[idx].to(device))

        history = train_loop(module, module.parameters(), len(inputs), batch_loss, cfg, weights=weights,
                             validate=validate, epoch_size=max(n_real, len(cf_train)), desc="CFKD",
                             progress=self.progress)
        record.update(
            epochs=cfg.epochs,
            selected_epoch=history["best_epoch"],
            val_scores=[{"val": s[0], **({"val_counterfactuals": s[1]} if len(s) > 1 else {})} for s in scores],
            selection="mean of val and val-counterfactual accuracy" if cf_val is not None else "val accuracy",
            config=history["config"],
        )
        return CorrectionResult(model, record, artifacts)
