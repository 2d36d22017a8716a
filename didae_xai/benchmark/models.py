"""Train or reuse every model a comparison needs, through the :class:`ArtifactStore`.

The chain (each step's hash includes the hashes it depends on):

    data ─┬─ foundation model (or a given timm/OpenCLIP backbone) ─┬─ probe student ─ surrogate
          │                                                      └─ autoencoder
          ├─ ResNet-18 student ─ surrogate
          └─ teacher (balanced data)

Every training loop checkpoints into the artifact's partial folder, so an interrupted run resumes
where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from didae_xai.autoencoder import DiffusionAutoencoder, get_preset as get_autoencoder_preset, train_autoencoder
from didae_xai.benchmark.presets import ComparePreset
from didae_xai.benchmark.store import ArtifactStore, config_hash
from didae_xai.data.base import BenchmarkData, ImageDataset
from didae_xai.data.square import CLASS_FACTORS, CONTINUOUS_FACTORS
from didae_xai.io import save_json
from didae_xai.metrics.surrogate import SURROGATE_CPU, distill_surrogate, load_surrogate
from didae_xai.models import Classifier, TimmClassifier, load_classifier, save_classifier
from didae_xai.models.training import (
    FOUNDATION_CPU,
    PROBE_STUDENT,
    RESNET_STUDENT,
    TEACHER_CPU,
    train_attribute_model,
    train_classifier,
    train_probe,
)

Log = Callable[[str], None]

#: CPU cost of one ResNet-18 image-epoch at 32x32 on 2 cores (forward + backward), measured with
#: ``benchmarks/students.py``; used only for the time estimates printed before each step.
SECONDS_PER_IMAGE_EPOCH = 1.1e-3


@dataclass
class ComparisonModels:
    """The trained models of one comparison and their store keys."""

    backbone: nn.Module
    students: dict[str, Classifier]
    teacher: Classifier | None
    autoencoder: DiffusionAutoencoder
    fm: Classifier | None = None
    keys: dict[str, str] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    minutes: dict[str, float] = field(default_factory=dict)


def estimate(images: int, epochs: int, size: int, threads: int) -> str:
    seconds = SECONDS_PER_IMAGE_EPOCH * images * epochs * (size / 32) ** 2 * 2 / max(threads, 1)
    return f"about {max(seconds / 60, 0.1):.1f} min on CPU"


def fm_factors(data: BenchmarkData) -> tuple[list[str], list[str]]:
    """What the trained foundation model predicts: Square's 8 factors, else every attribute
    (binary ones as classes, the rest as continuous values), task and confounder included."""
    if set(CLASS_FACTORS + CONTINUOUS_FACTORS) <= set(data.generator.factors):
        return list(CLASS_FACTORS), list(CONTINUOUS_FACTORS)
    factors = with_label_factors(data.generator, data).factors
    binary = [k for k, v in factors.items() if set(v.unique().tolist()) <= {0.0, 1.0}]
    return binary, [k for k in factors if k not in binary]


def with_label_factors(ds: ImageDataset, data: BenchmarkData) -> ImageDataset:
    """``ds`` whose factors also hold the task and confounder labels (a metadata CSV keeps them apart)."""
    factors = dict(ds.factors)
    factors.setdefault(data.task, ds.y.float())
    if ds.a is not None:
        factors.setdefault(data.confounder, ds.a.float())
    return replace(ds, factors=factors)


def _train_and_save(folder: Path, train: Callable[[Path], Classifier]) -> None:
    """Train with a checkpoint inside ``folder`` (resumable), save the model, drop the checkpoint."""
    checkpoint = folder / "checkpoint.pt"
    save_classifier(train(checkpoint), folder / "model")
    checkpoint.unlink(missing_ok=True)


def given_backbone(spec: str, weights: str | None, image_size: int) -> tuple[nn.Module, str]:
    """A frozen ``timm:<arch>`` or ``open_clip:<arch>`` backbone from local weights, and its store key."""
    from didae_xai import registry

    kind, _, arch = spec.partition(":")
    if kind not in ("timm", "open_clip") or not arch:
        raise ValueError(f"--backbone must look like 'timm:<model>' or 'open_clip:<model>', got {spec!r}.")
    if weights is None or not Path(weights).exists():
        raise FileNotFoundError(
            f"--backbone {spec} needs its weights from a local file: pass --weights PATH (got {weights!r}); "
            "nothing is downloaded."
        )
    first = "model_name" if kind == "timm" else "arch"
    backbone = registry.create("backbone", kind, **{first: arch}, weights=weights)
    stat = os.stat(weights)
    return backbone.eval(), config_hash({"backbone": spec, "weights": str(Path(weights).resolve()),
                                         "size": stat.st_size, "mtime": stat.st_mtime, "image_size": image_size})


def prepare_models(
    data: BenchmarkData,
    data_key: dict,
    preset: ComparePreset,
    store: ArtifactStore,
    students: tuple[str, ...],
    need_teacher: bool,
    seed: int = 0,
    backbone: str | None = None,
    weights: str | None = None,
    threads: int = 2,
    device: str = "cpu",
    log: Log = print,
) -> ComparisonModels:
    """Load every model of the comparison from ``store``, training those it lacks."""
    p, size = preset, data.generator.image_size
    gen_train, gen_val = data.generator.select_split("train"), data.generator.select_split("val")
    if len(gen_val) == 0:  # datasets without generator splits: hold out a tenth for selection
        n_val = max(1, len(gen_train) // 10)
        gen_train, gen_val = data.generator.subset(torch.arange(n_val, len(data.generator))), data.generator.subset(torch.arange(n_val))
    keys, cached, minutes = {}, {}, {}

    def note(name: str, entry) -> None:
        keys[name], cached[name] = entry.key, entry.cached
        minutes[name] = 0.0 if entry.cached else entry.meta["build_seconds"] / 60
        if entry.cached:
            log(f"[green]reused[/green] {name} from {entry.path}")

    # ---------------------------------------------------------------- foundation model / backbone
    fm = None
    if backbone is not None:
        encoder, keys["fm"] = given_backbone(backbone, weights, size)
        encoder.to(device)
        cached["fm"], minutes["fm"] = True, 0.0
    else:
        classes, continuous = fm_factors(data)
        cfg = replace(FOUNDATION_CPU, epochs=p.fm_epochs, seed=seed)
        log(f"foundation model: ResNet-18 predicting {len(classes) + len(continuous)} attributes, {cfg.epochs} epochs "
            f"on {len(gen_train)} balanced images ({estimate(len(gen_train), cfg.epochs, size, threads)})")
        gen_t, gen_v = with_label_factors(gen_train, data), with_label_factors(gen_val, data)
        entry = store.get_or_build(
            "fm", {"data": data_key, "train": asdict(cfg), "factors": [classes, continuous]},
            lambda folder: _train_and_save(folder, lambda ckpt: train_attribute_model(
                gen_t, classes, continuous, cfg, val=gen_v, checkpoint=ckpt, device=device)[0]),
        )
        note("fm", entry)
        fm = load_classifier(entry.path / "model").to(device)
        encoder = fm.as_backbone()

    # ---------------------------------------------------------------- students and teacher
    trained: dict[str, Classifier] = {}
    if "probe" in students:
        cfg = replace(PROBE_STUDENT, epochs=p.probe_epochs, seed=seed)
        log(f"probe student: linear probe on the frozen embedding, {cfg.epochs} epochs on {len(data.train)} poisoned images")
        entry = store.get_or_build(
            "probe", {"data": data_key, "train": asdict(cfg)},
            lambda folder: _train_and_save(folder, lambda ckpt: train_probe(encoder, data.train, cfg, val=data.val, checkpoint=ckpt)[0]),
            deps=(keys["fm"],),
        )
        note("probe", entry)
        trained["probe"] = load_classifier(entry.path / "model", backbone=encoder).to(device)
    if "resnet" in students:
        cfg = replace(RESNET_STUDENT, epochs=p.resnet_epochs, seed=seed)
        log(f"ResNet-18 student: end-to-end, {cfg.epochs} epochs on {len(data.train)} poisoned images "
            f"({estimate(len(data.train), cfg.epochs, size, threads)})")

        def resnet(ckpt: Path) -> Classifier:
            model = TimmClassifier("resnet18", num_classes=2, image_size=size).to(device)
            train_classifier(model, data.train, cfg, val=data.val, checkpoint=ckpt, desc="resnet student")
            return model

        entry = store.get_or_build("resnet", {"data": data_key, "train": asdict(cfg)}, lambda folder: _train_and_save(folder, resnet))
        note("resnet", entry)
        trained["resnet"] = load_classifier(entry.path / "model").to(device)
    teacher = None
    if need_teacher:
        cfg = replace(TEACHER_CPU, epochs=p.teacher_epochs, seed=seed)
        log(f"teacher: ResNet-18 on {len(gen_train)} balanced images, {cfg.epochs} epochs "
            f"({estimate(len(gen_train), cfg.epochs, size, threads)})")

        def teach(ckpt: Path) -> Classifier:
            model = TimmClassifier("resnet18", num_classes=2, image_size=size).to(device)
            train_classifier(model, gen_train, cfg, val=gen_val, checkpoint=ckpt, desc="teacher")
            return model

        entry = store.get_or_build("teacher", {"data": data_key, "train": asdict(cfg)}, lambda folder: _train_and_save(folder, teach))
        note("teacher", entry)
        teacher = load_classifier(entry.path / "model").to(device)

    # ---------------------------------------------------------------- diffusion autoencoder
    ae_preset = get_autoencoder_preset(p.autoencoder)
    if ae_preset.image_size != size:
        raise ValueError(f"Autoencoder preset {p.autoencoder!r} is for {ae_preset.image_size}x{ae_preset.image_size} "
                         f"images, the data is {size}x{size}; choose a matching preset.")
    ae_cfg = replace(ae_preset.train, seed=seed)
    if p.autoencoder_minutes is not None or p.autoencoder_steps is not None:
        ae_cfg = replace(ae_cfg, max_minutes=p.autoencoder_minutes,
                         steps=p.autoencoder_steps if p.autoencoder_steps is not None else ae_cfg.steps)
    budget = f"{ae_cfg.max_minutes:g} min" if ae_cfg.max_minutes else f"{ae_cfg.steps} steps"
    log(f"diffusion autoencoder: preset {ae_preset.name}, {budget} on {len(data.generator)} balanced images")

    def build_autoencoder(folder: Path) -> dict:
        z = encoder.embed(data.generator.float_images(), 256)
        torch.manual_seed(seed)
        unet = ae_preset.build_unet(encoder.embedding_dim)
        ema, history = train_autoencoder(unet, data.generator.images, z, ae_cfg, checkpoint=folder / "checkpoint.pt",
                                        device=device)
        DiffusionAutoencoder(encoder, ema, steps=p.ddim_steps, bf16=ae_cfg.bf16).save_pretrained(folder / "autoencoder")
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        summary = {k: v for k, v in history.items() if k != "loss"}
        save_json(summary, folder / "autoencoder" / "train_history.json")
        return {"train_steps": history["step"], "stopped": history["stopped"]}

    entry = store.get_or_build("autoencoder", {"data": data_key, "preset": ae_preset.name, "train": asdict(ae_cfg)},
                               build_autoencoder, deps=(keys["fm"],))
    note("autoencoder", entry)
    ae = DiffusionAutoencoder.from_pretrained(entry.path / "autoencoder", encoder).to(device)
    ae.steps = p.ddim_steps
    return ComparisonModels(encoder, trained, teacher, ae, fm, keys, cached, minutes)


def prepare_surrogate(
    name: str,
    student: Classifier,
    data: BenchmarkData,
    preset: ComparePreset,
    store: ArtifactStore,
    student_key: str,
    seed: int = 0,
    device: str = "cpu",
    log: Log = print,
) -> tuple[nn.Module, float]:
    """The adversarially distilled NAFR surrogate of ``student`` (SPEC §5), from the store or trained."""
    cfg = replace(SURROGATE_CPU, epochs=preset.surrogate_epochs)
    eps = data.train.image_size / 64  # reference: eps = 1.0 at 64x64; L2 norms grow with the side
    pool = torch.cat([data.train.images, data.val.images])
    log(f"NAFR surrogate of the {name} student: LeakySoftplus ResNet-18, PGD-L2 eps {eps:g}, {cfg.epochs} epochs "
        f"on {len(pool)} images")

    def build(folder: Path) -> dict:
        surrogate = distill_surrogate(student, pool, cfg, eps=eps, seed=seed, checkpoint=folder / "checkpoint.pt",
                                      device=device)
        save_classifier(surrogate, folder / "model")
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        return {"fidelity": surrogate.fidelity_}

    entry = store.get_or_build("surrogate", {"train": asdict(cfg), "eps": eps, "seed": seed}, build, deps=(student_key,))
    if entry.cached:
        log(f"[green]reused[/green] surrogate of {name} from {entry.path}")
    return load_surrogate(entry.path / "model").to(device), float(entry.meta["fidelity"])
