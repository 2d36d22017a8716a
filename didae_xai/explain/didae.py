"""The DiDAE explainer: K disentangled, gradient-free counterfactuals per image (SPEC §4)."""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import nn

from didae_xai.dictionary.base import Dictionary
from didae_xai.explain.explanation import CounterfactualExplanation
from didae_xai.explain.probe import LinearProbe, distill_probe
from didae_xai.explain.reflections import boundary_inversion, component_reflection

TargetType = int | Sequence[int] | torch.Tensor | None


def resolve_target(target: TargetType, n: int, default: torch.Tensor) -> torch.Tensor:
    """Captum's ``target`` forms for a classifier: ``None`` (use ``default``), one int for all inputs,
    or one class per input as a list or a tensor of shape ``(N,)``."""
    if target is None:
        return default.long()
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    t = torch.as_tensor(target)
    if t.ndim == 0:
        return t.long().expand(n).clone()
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"target must be an int or hold one class per input ({n}), got shape {tuple(t.shape)}.")
    return t.long()


def check_inputs(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Validate a batch of images for an explainer: ``(N, C, S, S)`` in ``[0, 1]`` (``uint8`` is scaled)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"inputs must be a tensor of images (N, C, H, W) in [0, 1], got {getattr(x, 'shape', type(x))}.")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        raise ValueError(
            f"The autoencoder works on {image_size}x{image_size} images, got {x.shape[-2]}x{x.shape[-1]}; resize them first."
        )
    x = x.float()
    if len(x) and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise ValueError(f"Images must lie in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}].")
    return x


class DiDAE:
    """Counterfactual explainer: reflect the embedding across the distilled boundary along each atom.

    For an image ``x`` with embedding ``z`` and DDIM-inverted noise ``x_T``, and each atom ``u_k`` of
    the dictionary, ``z'_k = z - lam * (m(z) / (w . u_k)) u_k`` mirrors the margin ``m`` of the
    probe distilled from ``model`` (``lam = 2``) while moving only along ``u_k``; decoding
    ``(z'_k, x_T)`` gives the counterfactual. No gradients, one batched decode per counterfactual.

    Args:
        model: the classifier to explain; takes images in ``[0, 1]``, returns logits.
        autoencoder: a trained :class:`~didae_xai.autoencoder.DiffusionAutoencoder` whose backbone
            gives the embedding ``z``.
        dictionary: a fitted :class:`~didae_xai.dictionary.Dictionary` in the same embedding space.
        probe: a distilled :class:`LinearProbe`; if ``None``, call :meth:`fit` before explaining.
        atoms: atom indices or names to use (default: all).
        lam: reflection strength (2 mirrors the margin, 1 lands on the boundary).
        line_search: optional ascending strengths; per counterfactual the smallest that flips
            ``model`` is kept (costs one decode per strength tried).
        max_shift: optional bound on each move, in standard deviations of the data along the atom
            (the dictionary's ``scale_``): boundaries further away are approached, not crossed, so
            counterfactuals stay on the data manifold (reported as not flipping). ``None``: the
            paper's unbounded reflection.
        internal_batch_size: factuals processed at a time (each makes K decodes).
        class_names: optional names of the model's classes, for plots.

    Example:
        >>> explainer = DiDAE(student, autoencoder, ProcrustesDictionary(names).fit(Z, Y)).fit(train_images)
        >>> explanation = explainer.explain(images)          # K counterfactuals per image
        >>> delta = explainer.attribute(images, target=1)    # Captum-style, shaped like images
    """

    method = "didae"

    def __init__(
        self,
        model: nn.Module,
        autoencoder: nn.Module,
        dictionary: Dictionary,
        probe: LinearProbe | None = None,
        atoms: Sequence[int | str] | None = None,
        lam: float = 2.0,
        line_search: Sequence[float] | None = None,
        internal_batch_size: int | None = None,
        class_names: list[str] | None = None,
        max_shift: float | None = None,
    ):
        dictionary._check_fitted()
        dim = autoencoder.backbone.embedding_dim
        if dictionary.embedding_dim != dim:
            raise ValueError(
                f"The dictionary was fitted on {dictionary.embedding_dim}-d embeddings but the autoencoder's "
                f"backbone gives {dim}-d ones; fit the dictionary on this backbone's embeddings."
            )
        if probe is not None and probe.weight.shape[1] != dim:
            raise ValueError(f"The probe expects {probe.weight.shape[1]}-d embeddings, the backbone gives {dim}-d.")
        if line_search is not None and (len(line_search) == 0 or list(line_search) != sorted(line_search)):
            raise ValueError("line_search must be a non-empty ascending sequence of strengths, e.g. (1.0, 1.5, 2.0).")
        self.model = model
        self.autoencoder = autoencoder
        self.dictionary = dictionary
        self.probe = probe
        self.atoms = [dictionary.atom(a) for a in (atoms if atoms is not None else range(dictionary.n_components))]
        self.lam = lam
        if max_shift is not None and (max_shift <= 0 or dictionary.scale_ is None):
            raise ValueError("max_shift must be positive and needs a dictionary fitted by this version (scale_).")
        self.max_shift = max_shift
        self.line_search = list(line_search) if line_search is not None else None
        self.internal_batch_size = internal_batch_size
        self.class_names = class_names

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, images: torch.Tensor, batch_size: int = 256) -> "DiDAE":
        """Distil ``model`` into a linear probe on the embedding, from its hard predictions on ``images``.

        Use the data the model was trained on (e.g. the poisoned training set). The probe's agreement
        with the model is in ``self.probe.fidelity``.
        """
        images = self._check_inputs(images)
        z = self.autoencoder.embed(images)
        logits = self._logits(images, batch_size)
        self.probe = distill_probe(z, logits.argmax(1), num_classes=logits.shape[1])
        return self

    # ------------------------------------------------------------------ helpers
    def _check_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return check_inputs(x, self.autoencoder.image_size)

    @torch.no_grad()
    def _logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            return torch.cat([self.model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
        finally:
            self.model.train(was_training)

    def _atom_vectors(self) -> torch.Tensor:
        return self.dictionary.components_[self.atoms].float()

    def counterfactual_embeddings(
        self, z: torch.Tensor, source: torch.Tensor, target: torch.Tensor, lam: float | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edited embeddings ``(N, K, D)`` and the ``movable`` mask ``(N, K)``, one per atom."""
        if self.probe is None:
            raise RuntimeError("No probe: call fit(train_images) first or pass probe=...")
        w, b = self.probe.pair(source, target)
        lam = self.lam if lam is None else lam
        out, movable = [], []
        for k, u in enumerate(self._atom_vectors()):
            lam_k = lam[:, k] if isinstance(lam, torch.Tensor) and lam.ndim == 2 else lam
            bound = None if self.max_shift is None else self.max_shift * float(self.dictionary.scale_[self.atoms[k]])
            z_k, ok = boundary_inversion(z, w, u, b, lam_k, max_step=bound)
            out.append(z_k)
            movable.append(ok)
        return torch.stack(out, 1), torch.stack(movable, 1)

    def _decode_all(self, z_cf: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
        n, k = z_cf.shape[:2]
        x_T_tiled = x_T[:, None].expand(n, k, *x_T.shape[1:]).reshape(n * k, *x_T.shape[1:])
        images = self.autoencoder.decode(z_cf.reshape(n * k, -1), x_T_tiled)
        return images.reshape(n, k, *x_T.shape[1:])

    def _score(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = images.shape[:2]
        probs = self._logits(images.reshape(n * k, *images.shape[2:])).softmax(-1).reshape(n, k, -1)
        pred = probs.argmax(-1)
        conf = probs.gather(-1, target[:, None, None].expand(n, k, 1)).squeeze(-1)
        return pred, conf

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def explain(self, inputs: torch.Tensor, target: TargetType = None, atoms: Sequence[int | str] | None = None) -> CounterfactualExplanation:
        """Explain a batch: one counterfactual per atom for every input.

        Args:
            inputs: images ``(N, C, H, W)`` in ``[0, 1]``.
            target: the class to reach (Captum forms: int, list or tensor of one per input). Default:
                the other class for a binary model, the runner-up class otherwise.
            atoms: restrict to these atom indices or names (default: the explainer's atoms).

        Returns:
            A :class:`CounterfactualExplanation`.
        """
        if atoms is not None:
            saved, self.atoms = self.atoms, [self.dictionary.atom(a) for a in atoms]
            try:
                return self.explain(inputs, target)
            finally:
                self.atoms = saved
        x = self._check_inputs(inputs)
        n = len(x)
        chunk = self.internal_batch_size or max(n, 1)
        parts = [self._explain_chunk(x[i : i + chunk], target if not _per_sample(target) else _slice(target, i, chunk, n)) for i in range(0, n, chunk)]
        return _concat(parts)

    def _explain_chunk(self, x: torch.Tensor, target: TargetType) -> CounterfactualExplanation:
        t0 = time.perf_counter()
        probs = self._logits(x).softmax(-1)
        pred = probs.argmax(-1)
        default = 1 - pred if probs.shape[1] == 2 else probs.topk(2, -1).indices[:, 1]
        tgt = resolve_target(target, len(x), default)
        if (tgt >= probs.shape[1]).any() or (tgt < 0).any():
            raise ValueError(f"target classes must be in [0, {probs.shape[1]}), got {tgt.unique().tolist()}.")
        t1 = time.perf_counter()
        z, x_T = self.autoencoder.encode(x)
        t2 = time.perf_counter()
        if self.line_search is None:
            z_cf, movable = self.counterfactual_embeddings(z, pred, tgt)
            images = self._decode_all(z_cf, x_T)
            cf_pred, conf = self._score(images, tgt)
        else:
            images, cf_pred, conf, movable = self._line_search(z, x_T, pred, tgt)
        t3 = time.perf_counter()
        flipped = cf_pred == tgt[:, None]
        n_cf = images.shape[0] * images.shape[1]
        timings = {"classify_s": t1 - t0, "encode_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0}
        timings["cf_per_s"] = n_cf / timings["total_s"]
        return CounterfactualExplanation(
            factuals=x, counterfactuals=images, atoms=list(self.atoms),
            atom_names=[self.dictionary.names_[a] for a in self.atoms], target=tgt, factual_pred=pred,
            factual_confidence=probs.gather(1, pred[:, None]).squeeze(1), cf_pred=cf_pred,
            cf_target_confidence=conf, flipped=flipped, movable=movable, timings=timings,
            method=self.method, class_names=self.class_names,
        )

    def _line_search(self, z, x_T, pred, tgt):
        n, k = len(z), len(self.atoms)
        done = torch.zeros(n, k, dtype=torch.bool)
        images = torch.empty(n, k, *x_T.shape[1:])
        cf_pred = torch.empty(n, k, dtype=torch.long)
        conf = torch.empty(n, k)
        movable = None
        for lam in self.line_search:
            z_cf, movable = self.counterfactual_embeddings(z, pred, tgt, lam)
            todo = ~done
            rows, cols = todo.nonzero(as_tuple=True)
            if len(rows) == 0:
                break
            x_T_sel = x_T[rows]
            imgs = self.autoencoder.decode(z_cf[rows, cols], x_T_sel)
            p, c = self._score(imgs[:, None], tgt[rows])
            images[rows, cols], cf_pred[rows, cols], conf[rows, cols] = imgs, p[:, 0], c[:, 0]
            done[rows, cols] = p[:, 0] == tgt[rows]
        return images, cf_pred, conf, movable

    def attribute(
        self,
        inputs: torch.Tensor,
        target: TargetType = None,
        atom: int | str | None = None,
        internal_batch_size: int | None = None,
    ) -> torch.Tensor:
        """Captum-style attribution: the counterfactual change ``x_cf - x``, shaped like ``inputs``.

        Args:
            inputs: images ``(N, C, H, W)`` in ``[0, 1]``.
            target: class to reach, in Captum's forms (int, list, tensor); default as in :meth:`explain`.
            atom: use this atom's counterfactual. ``None``: per input, the atom whose counterfactual
                gives ``target`` the highest probability (a flipping one whenever any flips).
            internal_batch_size: factuals per chunk, to bound memory.

        Returns:
            ``x_cf - x``, same shape as ``inputs``: positive where the counterfactual is brighter.
        """
        saved = self.internal_batch_size
        self.internal_batch_size = internal_batch_size or saved
        try:
            exp = self.explain(inputs, target, atoms=None if atom is None else [atom])
        finally:
            self.internal_batch_size = saved
        best = exp.cf_target_confidence.argmax(1)
        cf = exp.counterfactuals[torch.arange(len(exp)), best]
        return (cf - exp.factuals).to(inputs.dtype if inputs.is_floating_point() else torch.float32)

    @torch.no_grad()
    def reflect(self, inputs: torch.Tensor, atom: int | str) -> torch.Tensor:
        """Component reflection: mirror the coordinate along one atom about the mean and decode.

        Shows what the atom encodes, independently of any classifier. Returns images in ``[0, 1]``.
        """
        x = self._check_inputs(inputs)
        k = self.dictionary.atom(atom)
        z, x_T = self.autoencoder.encode(x)
        u = self.dictionary.components_[k].float()
        z_r = component_reflection(z, self.dictionary.mean_.float(), u)
        return self.autoencoder.decode(z_r, x_T)


def _per_sample(target: TargetType) -> bool:
    return target is not None and not isinstance(target, int) and torch.as_tensor(target).ndim == 1


def _slice(target: TargetType, i: int, chunk: int, n: int) -> torch.Tensor:
    t = torch.as_tensor(target)
    if len(t) != n:
        raise ValueError(f"target must be an int or hold one class per input ({n}), got {len(t)}.")
    return t[i : i + chunk]


def _concat(parts: list[CounterfactualExplanation]) -> CounterfactualExplanation:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    total = sum(p.timings["total_s"] for p in parts)
    timings = {key: sum(p.timings[key] for p in parts) for key in ("classify_s", "encode_s", "decode_s", "total_s")}
    timings["cf_per_s"] = sum(p.counterfactuals.shape[0] * p.counterfactuals.shape[1] for p in parts) / total
    return CounterfactualExplanation(
        factuals=cat("factuals"), counterfactuals=cat("counterfactuals"), atoms=first.atoms,
        atom_names=first.atom_names, target=cat("target"), factual_pred=cat("factual_pred"),
        factual_confidence=cat("factual_confidence"), cf_pred=cat("cf_pred"),
        cf_target_confidence=cat("cf_target_confidence"), flipped=cat("flipped"), movable=cat("movable"),
        timings=timings, method=first.method, class_names=first.class_names,
    )
