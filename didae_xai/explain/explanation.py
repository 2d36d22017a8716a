"""The result of explaining a batch: factuals, K counterfactuals each, and what the model said."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from didae_xai.io import save_json, save_tensors


@dataclass
class CounterfactualExplanation:
    """K counterfactuals for each of N factuals.

    Attributes:
        factuals: ``(N, C, H, W)`` images in ``[0, 1]``.
        counterfactuals: ``(N, K, C, H, W)`` in ``[0, 1]``; column ``k`` edits atom ``atoms[k]``.
        atoms: the K atom indices; atom_names: their names.
        target: ``(N,)`` the class each counterfactual should reach.
        factual_pred: ``(N,)`` the model's prediction on the factual.
        factual_confidence: ``(N,)`` the model's probability of its prediction.
        cf_pred: ``(N, K)`` predictions on the counterfactuals.
        cf_target_confidence: ``(N, K)`` probability of ``target`` on each counterfactual.
        flipped: ``(N, K)`` whether the model predicts ``target`` (confidence >= 0.5 for two classes).
        movable: ``(N, K)`` False where the atom cannot move the distilled boundary (left unchanged).
        timings: seconds per stage and ``cf_per_s``.
        method: the explainer's name.
    """

    factuals: torch.Tensor
    counterfactuals: torch.Tensor
    atoms: list[int]
    atom_names: list[str]
    target: torch.Tensor
    factual_pred: torch.Tensor
    factual_confidence: torch.Tensor
    cf_pred: torch.Tensor
    cf_target_confidence: torch.Tensor
    flipped: torch.Tensor
    movable: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    method: str = "didae"
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.factuals)

    @property
    def num_atoms(self) -> int:
        return len(self.atoms)

    @property
    def differences(self) -> torch.Tensor:
        """``x_cf - x`` for every counterfactual, ``(N, K, C, H, W)``."""
        return self.counterfactuals - self.factuals[:, None]

    def flip_rate_by_atom(self) -> dict[str, float]:
        return {name: self.flipped[:, k].float().mean().item() for k, name in enumerate(self.atom_names)}

    def _class(self, c: int) -> str:
        return self.class_names[c] if self.class_names else str(c)

    def to_dict(self) -> dict:
        """Everything but the images, as plain Python types (JSON-ready)."""
        return {
            "method": self.method,
            "n_factuals": len(self),
            "atoms": list(self.atoms),
            "atom_names": list(self.atom_names),
            "target": self.target.tolist(),
            "factual_pred": self.factual_pred.tolist(),
            "factual_confidence": self.factual_confidence.tolist(),
            "cf_pred": self.cf_pred.tolist(),
            "cf_target_confidence": self.cf_target_confidence.tolist(),
            "flipped": self.flipped.tolist(),
            "movable": self.movable.tolist(),
            "flip_rate": self.flipped.float().mean().item(),
            "flip_rate_by_atom": self.flip_rate_by_atom(),
            "timings": dict(self.timings),
        }

    def plot(self, max_rows: int = 8, path: str | Path | None = None, scale: float = 1.3):
        """A grid: the factual, then one column per atom, titled with the atom and the new prediction.

        Returns the matplotlib Figure (saved to ``path`` if given); never calls ``plt.show()``.
        """
        import matplotlib.pyplot as plt

        rows = min(max_rows, len(self))
        cols = 1 + self.num_atoms
        fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows + 0.4), squeeze=False)
        for i in range(rows):
            panels = [(self.factuals[i], f"factual: {self._class(int(self.factual_pred[i]))}", None)]
            for k, name in enumerate(self.atom_names):
                pred = int(self.cf_pred[i, k])
                mark = "flip" if self.flipped[i, k] else "no flip"
                color = "tab:green" if self.flipped[i, k] else "tab:gray"
                panels.append((self.counterfactuals[i, k], f"{name}\n→ {self._class(pred)} ({mark})", color))
            for ax, (img, title, color) in zip(axes[i], panels):
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title, fontsize=7, color=color or "black")
        fig.suptitle(f"{self.method}: counterfactuals per atom", fontsize=9)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def save(self, directory: str | Path) -> Path:
        """Write ``explanation.json``, ``images.safetensors`` (factuals, counterfactuals) and ``grid.png``."""
        import matplotlib.pyplot as plt

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors({"factuals": self.factuals, "counterfactuals": self.counterfactuals}, directory / "images.safetensors")
        save_json(self.to_dict(), directory / "explanation.json")
        plt.close(self.plot(path=directory / "grid.png"))
        return directory
