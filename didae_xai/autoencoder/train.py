"""Training of the conditional UNet: EMA, gradient clipping, condition dropout, atomic resumable checkpoints.

The backbone is frozen, so the embeddings z are computed once per image beforehand and passed in;
the loop never runs the backbone. Every random draw (data order, noise, timesteps, condition
dropout) comes from one seeded ``torch.Generator`` whose state is saved in the checkpoint together
with the weights, the EMA, the optimizer and the step: a run interrupted at any point and resumed
from its last checkpoint ends with exactly the weights of an uninterrupted run, and loses at most
``checkpoint_every`` steps of work.

Presets (:data:`PRESETS`): ``"square32_cpu"`` (a 1.36 M-parameter UNet for 32x32 Square that trains
in about 10 minutes on 2 CPU cores), ``"square64_paper"`` and ``"celeba128_paper"`` (the reference
UNet of SPEC §2, meant for a GPU).
"""

from __future__ import annotations

import copy
import difflib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from didae_xai.autoencoder.unet import ConditionalUNet
from didae_xai.io import load_checkpoint, save_checkpoint
from didae_xai.models.inference import as_unit_float


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Optimisation recipe of the diffusion autoencoder.

    Attributes:
        steps: total optimizer steps (the run stops earlier if ``max_minutes`` is reached).
        max_minutes: optional wall-clock budget of the whole run (summed over resumes).
        batch_size: images per step.
        lr: AdamW learning rate after a linear warm-up of ``warmup_steps``.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm.
        ema_decay: EMA decay (ramped up as ``min(decay, (1 + n) / (10 + n))``).
        cond_dropout: share of samples trained with the null embedding instead of z.
        snr_gamma: down-weight the low-noise steps (signal-to-noise ratio above ``gamma``) in the loss,
            in the spirit of Min-SNR-gamma (Hang et al. 2023); see :func:`_snr_weights`. The plain
            v-MSE weighs the x0 error by ``SNR + 1`` and so spends most of its gradient on the lowest
            noise levels, where on noisy images (Square's pixel noise) the loss is mostly irreducible.
            ``None`` keeps the plain MSE.
        checkpoint_every: steps between atomic checkpoints (also written when the run stops).
        bf16: bf16 autocast for the forward pass (the loss stays fp32).
        normalize_embeddings: standardise z with the training set's statistics (stored in the UNet).
        seed: seeds the one generator all random draws come from.
    """

    steps: int = 5000
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    snr_gamma: float | None = None
    checkpoint_every: int = 250
    bf16: bool = True
    normalize_embeddings: bool = True
    seed: int = 0


@dataclass(frozen=True)
class AutoencoderPreset:
    """A named UNet architecture, training recipe and DDIM step count."""

    name: str
    image_size: int
    unet: dict
    train: AutoencoderTrainConfig
    steps: int = 20
    description: str = ""

    def build_unet(self, embedding_dim: int, **overrides) -> ConditionalUNet:
        """A freshly initialised :class:`ConditionalUNet` for embeddings of width ``embedding_dim``."""
        return ConditionalUNet(embedding_dim=embedding_dim, sample_size=self.image_size, **{**self.unet, **overrides})


def _paper_preset(name: str, image_size: int, attention_level: int, steps: int, batch_size: int, description: str) -> AutoencoderPreset:
    """The reference UNet (SPEC §2) with attention at the level whose resolution is 16x16."""
    down = ["DownBlock2D"] * 4
    down[attention_level] = "AttnDownBlock2D"
    up = ["UpBlock2D"] * 4
    up[3 - attention_level] = "AttnUpBlock2D"
    return AutoencoderPreset(
        name=name,
        image_size=image_size,
        unet=dict(
            block_out_channels=(64, 128, 256, 512),
            layers_per_block=2,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            add_attention=True,
            attention_head_dim=64,
            norm_num_groups=32,
            conditioning="adagn",
            prediction_type="epsilon",
        ),
        train=AutoencoderTrainConfig(
            steps=steps, batch_size=batch_size, lr=1e-4, warmup_steps=1000, ema_decay=0.9999, checkpoint_every=2000,
            bf16=True,
        ),
        steps=20,
        description=description,
    )


PRESETS: dict[str, AutoencoderPreset] = {
    "square32_cpu": AutoencoderPreset(
        name="square32_cpu",
        image_size=32,
        unet=dict(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            norm_num_groups=8,
            add_attention=False,
            conditioning="adagn",
            coordinate_channels=True,
            spatial_channels=8,
            prediction_type="v_prediction",
        ),
        train=AutoencoderTrainConfig(
            steps=100_000, max_minutes=10.0, batch_size=32, lr=1e-3, warmup_steps=100, ema_decay=0.999,
            snr_gamma=5.0, checkpoint_every=250, bf16=True,
        ),
        steps=20,
        description="32x32 Square on 2 CPU cores: 1.36 M-parameter UNet (32, 64, 64), one block per level, "
        "AdaGN + coordinate channels + spatial z-map, v-prediction with low-noise steps down-weighted, "
        "10 minutes, bf16.",
    ),
    "square64_paper": _paper_preset(
        "square64_paper", 64, attention_level=2, steps=200_000, batch_size=64,
        description="The reference UNet at 64x64 (SPEC §2: 64 channels, (1,2,4,8), attention at 16x16, "
        "2 blocks per level), eps-prediction, Adam 1e-4, EMA 0.9999; for a GPU.",
    ),
    "celeba128_paper": _paper_preset(
        "celeba128_paper", 128, attention_level=3, steps=300_000, batch_size=32,
        description="The reference UNet at 128x128 for CelebA (attention at 16x16), eps-prediction, "
        "Adam 1e-4, EMA 0.9999; for a GPU.",
    ),
}


def get_preset(name: str) -> AutoencoderPreset:
    """Look up a preset by name, with a suggestion for typos."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"Unknown autoencoder preset {name!r}; choose one of {', '.join(PRESETS)}.{hint}")
    return PRESETS[name]


class EMA:
    """Exponential moving average of a model's floating-point state (parameters and buffers)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].lerp_(value.detach().float(), 1 - decay)
            else:
                self.shadow[key].copy_(value)

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        state = model.state_dict()
        model.load_state_dict({k: v.to(device=state[k].device, dtype=state[k].dtype) for k, v in self.shadow.items()})
        return model

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: v.clone().float() for k, v in state["shadow"].items()}


def _plain_config(unet: ConditionalUNet) -> dict:
    """The UNet's config as plain JSON types (tuples -> lists), for comparing checkpoints."""
    return json.loads(json.dumps({k: v for k, v in dict(unet.config).items() if not k.startswith("_")}))


def _snr_weights(alphas_cumprod: torch.Tensor, prediction_type: str, gamma: float | None) -> torch.Tensor | None:
    """Per-timestep weights of the target MSE that cap the low-noise steps (``None``: unweighted).

    v-prediction: ``min(1, (gamma + 1) / (SNR + 1))``; eps-prediction: ``min(1, gamma / SNR)``
    (Min-SNR-gamma, Hang et al. 2023). Both leave every step with ``SNR <= gamma`` at weight 1.
    """
    if gamma is None:
        return None
    snr = alphas_cumprod / (1 - alphas_cumprod)
    if prediction_type == "v_prediction":
        return ((gamma + 1) / (snr + 1)).clamp(max=1.0).float()
    return (gamma / snr).clamp(max=1.0).float()


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return F.mse_loss(pred, target)
    return (((pred - target) ** 2).flatten(1).mean(1) * weights[t]).mean()


def _same_config(saved: dict, current: dict) -> bool:
    """Equal configs, reading a key missing on one side as the constructor's default (older checkpoints)."""
    import inspect

    defaults = {
        k: p.default for k, p in inspect.signature(ConditionalUNet.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    defaults = json.loads(json.dumps(defaults))
    return all(saved.get(k, defaults.get(k)) == current.get(k, defaults.get(k)) for k in set(saved) | set(current))


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float [-1, 1]."""
    return 2 * as_unit_float(images) - 1


def train_autoencoder(
    unet: ConditionalUNet,
    images: torch.Tensor,
    embeddings: torch.Tensor,
    config: AutoencoderTrainConfig = AutoencoderTrainConfig(),
    checkpoint: str | Path | None = None,
    max_steps: int | None = None,
    callback: Callable[[int, float], None] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "autoencoder",
) -> tuple[ConditionalUNet, dict]:
    """Train ``unet`` to denoise ``images`` conditioned on their precomputed ``embeddings``.

    Args:
        unet: the :class:`ConditionalUNet` to train (in place; it ends with the raw, non-EMA weights).
        images: ``(N, C, S, S)`` training images, ``uint8`` in ``[0, 255]`` or ``float`` in ``[0, 1]``.
        embeddings: ``(N, D)`` raw backbone embeddings of ``images`` (the backbone is frozen, so these
            are computed once).
        config: the recipe.
        checkpoint: optional file; written atomically every ``config.checkpoint_every`` steps and when
            the run stops, and resumed from if it exists.
        max_steps: stop this call after this many total steps (a checkpoint is written), e.g. to split
            a long run into sessions; resuming later continues to ``config.steps``.
        callback: ``callback(step, loss)`` after every step (may raise to interrupt the run).
        device: where to train (default: the UNet's device).
        progress: show a progress bar with the loss.

    Returns:
        ``(ema_unet, history)``: a copy of the UNet holding the EMA weights (use it for encoding and
        decoding) and a dict with ``loss`` per step, ``step``, ``elapsed_s``, ``resumed_from``,
        ``stopped`` (``"steps"``, ``"time"`` or ``"max_steps"``) and the ``config``.
    """
    if len(images) != len(embeddings):
        raise ValueError(f"images and embeddings differ in length: {len(images)} vs {len(embeddings)}.")
    if len(images) == 0:
        raise ValueError("Cannot train on an empty dataset.")
    unet.check_images(_to_unit(images[:1]))
    unet._check_embedding(embeddings, None)
    if config.checkpoint_every < 1 or config.batch_size < 1:
        raise ValueError("checkpoint_every and batch_size must be positive.")
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    unet.to(device)
    embeddings = embeddings.float()
    scheduler = unet.make_scheduler("ddpm")
    T = unet.config.num_train_timesteps
    gen = torch.Generator().manual_seed(config.seed)
    n = len(images)
    history: dict = {"loss": [], "step": 0, "elapsed_s": 0.0, "resumed_from": 0, "stopped": None, "config": asdict(config)}

    if config.normalize_embeddings:
        unet.set_embedding_stats(embeddings)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = EMA(unet, config.ema_decay)
    perm, pos, step, elapsed = torch.randperm(n, generator=gen), 0, 0, 0.0

    if checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        if not _same_config(state["unet_config"], _plain_config(unet)):
            raise ValueError(
                f"The checkpoint {checkpoint} was written for another UNet configuration; delete it or "
                f"build the UNet with {state['unet_config']}."
            )
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        perm, pos, step = state["perm"], int(state["pos"]), int(state["step"])
        elapsed = float(state["elapsed_s"])
        history.update(state["history"])
        history["resumed_from"] = step

    def save() -> None:
        if checkpoint is None:
            return
        history.update(step=step, elapsed_s=elapsed)
        save_checkpoint(
            {
                "unet": unet.state_dict(),
                "unet_config": _plain_config(unet),
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "perm": perm,
                "pos": pos,
                "step": step,
                "elapsed_s": elapsed,
                "history": history,
            },
            checkpoint,
        )

    def stop_reason() -> str | None:
        if step >= config.steps:
            return "steps"
        if config.max_minutes is not None and elapsed >= 60 * config.max_minutes:
            return "time"
        if max_steps is not None and step >= max_steps:
            return "max_steps"
        return None

    use_bf16 = config.bf16
    weights = _snr_weights(scheduler.alphas_cumprod, unet.config.prediction_type, config.snr_gamma)
    weights = None if weights is None else weights.to(device)
    unet.train()
    bar = tqdm(total=config.steps if config.max_minutes is None else None, initial=step, desc=desc, disable=not progress)
    smooth = None
    start = time.perf_counter() - elapsed
    while (reason := stop_reason()) is None:
        if pos + config.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + config.batch_size]
        pos += len(idx)
        x0 = _to_unit(images[idx])
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, T, (len(idx),), generator=gen)
        drop = torch.rand(len(idx), generator=gen) < config.cond_dropout
        x_t = scheduler.add_noise(x0, noise, t)
        target = noise if unet.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        x_t, target, t, drop = x_t.to(device), target.to(device), t.to(device), drop.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = unet(x_t, t, embeddings[idx].to(device), uncond_mask=drop)
        loss = _weighted_mse(pred.float(), target, t, weights)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        optimizer.step()
        ema.update(unet)
        step += 1
        value = loss.item()
        history["loss"].append(value)
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}", min=f"{elapsed / 60:.1f}")
        if step % config.checkpoint_every == 0:
            save()
        if callback is not None:
            callback(step, value)
    bar.close()
    history["stopped"] = reason
    save()
    history.update(step=step, elapsed_s=elapsed)
    unet.eval()
    ema_unet = ema.copy_to(copy.deepcopy(unet)).eval()
    return ema_unet, history


def resume_info(checkpoint: str | Path) -> dict:
    """Step, elapsed seconds and stop reason stored in a checkpoint (cheap to call)."""
    state = load_checkpoint(checkpoint)
    return {"step": int(state["step"]), "elapsed_s": float(state["elapsed_s"]), "stopped": state["history"].get("stopped")}


__all__ = [
    "AutoencoderPreset",
    "AutoencoderTrainConfig",
    "EMA",
    "PRESETS",
    "get_preset",
    "resume_info",
    "train_autoencoder",
]
