"""The ``didae-xai compare`` runner: one head-to-head benchmark from data to report.

:func:`run_compare` trains or reuses every model (:mod:`didae_xai.benchmark.models`), fits the
dictionaries, explains the same balanced test factuals with every selected explainer, corrects every
selected student with every selected corrector, and writes ``results.json``, ``report.md`` and the
figures into the output folder (:mod:`didae_xai.benchmark.report`).

Resume: each finished explainer or corrector step is written to ``<out>/steps/`` under a key that
covers the config and the models it used; a rerun skips the steps whose key matches, so an interrupted
run loses at most the step it was in.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from didae_xai.benchmark.models import ComparisonModels, Log, prepare_models, prepare_surrogate, with_label_factors
from didae_xai.benchmark.presets import PRESETS, ComparePreset
from didae_xai.benchmark.store import ArtifactStore, config_hash
from didae_xai.data.base import BenchmarkData
from didae_xai.data.poisoning import balanced_indices, round_robin_order
from didae_xai.dictionary import ProcrustesDictionary, SVDDictionary
from didae_xai.io import load_json, save_json
from didae_xai.metrics import explanation_scores, group_report, square_oracle_latent

EXPLAINERS = ("didae_procrustes", "didae_svd", "dime", "fastdime", "ace")
GRADIENT_EXPLAINERS = ("dime", "fastdime", "ace")
#: Preset fields only the gradient baselines read: the other steps' resume keys leave them out, so
#: that, e.g., another ``--guidance-scales`` reruns DiME and FastDiME only.
GRADIENT_FIELDS = ("factuals_slow", "factuals_dime", "tau", "respacing", "guidance_scales", "ace_iterations",
                   "ace_steps", "ace_respacing")
CORRECTORS = ("erm", "didae_cfkd_preclustered", "didae_cfkd_oracle", "didae_projection",
              "p_clarc", "a_clarc", "rr_clarc", "groupdro", "dfr")
STUDENTS = ("probe", "resnet")
DATASETS = ("square", "celeba", "metadata_csv")
SQUARE_ATOMS = ("ColorA", "ColorB", "PositionX", "PositionY")


@dataclass
class CompareOptions:
    """What one ``compare`` run does. :meth:`check` validates it before anything is trained."""

    preset: ComparePreset = field(default_factory=lambda: PRESETS["quick"])
    dataset: str = "square"
    data_root: str | None = None
    explainers: tuple[str, ...] = EXPLAINERS
    correctors: tuple[str, ...] = CORRECTORS
    students: tuple[str, ...] = STUDENTS
    explain_student: str | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    backbone: str | None = None
    weights: str | None = None
    max_shift: float | None = None

    def check(self) -> "CompareOptions":
        for what, chosen, known in (("explainer", self.explainers, EXPLAINERS), ("corrector", self.correctors, CORRECTORS),
                                    ("student", self.students, STUDENTS), ("dataset", (self.dataset,), DATASETS)):
            unknown = [c for c in chosen if c not in known]
            if unknown:
                raise ValueError(f"Unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(known)}.")
        if not self.students:
            raise ValueError("Choose at least one student (probe, resnet).")
        if self.explain_student is not None and self.explain_student not in self.students:
            raise ValueError(f"--explain-student {self.explain_student!r} is not among the students {list(self.students)}.")
        if self.dataset != "square":
            if not self.data_root:
                raise ValueError(f"--dataset {self.dataset} reads local files: pass --data-root PATH "
                                 "(CelebA: the folder holding celeba/ in torchvision's layout; metadata_csv: the folder "
                                 "with metadata.csv and the images).")
            if not Path(self.data_root).exists():
                raise FileNotFoundError(f"--data-root {self.data_root} does not exist.")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine; use --device cpu.")
        return self

    @property
    def shift(self) -> float | None:
        """DiDAE's bound: ``--max-shift`` if given (0: unbounded), else the preset's."""
        value = self.preset.max_shift if self.max_shift is None else self.max_shift
        return None if not value else float(value)

    @property
    def primary_student(self) -> str:
        """Whose explanations fill ``explainers.<name>``: ``explain_student``, else the ResNet if run."""
        return self.explain_student or ("resnet" if "resnet" in self.students else self.students[0])

    def data_key(self) -> dict:
        return {"dataset": self.dataset, "root": str(Path(self.data_root).resolve()) if self.data_root else None,
                "size": self.preset.image_size, "n_generator": self.preset.n_generator, "seed": self.seed}

    def to_dict(self) -> dict:
        return {"preset": self.preset.to_dict(), "dataset": self.dataset, "data_root": self.data_root,
                "explainers": list(self.explainers), "correctors": list(self.correctors), "students": list(self.students),
                "explain_student": self.primary_student, "seed": self.seed, "device": self.device,
                "backbone": self.backbone, "weights": self.weights, "max_shift": self.shift}


def load_benchmark(options: CompareOptions) -> BenchmarkData:
    """The benchmark data of ``options`` (Square is generated; CelebA and metadata CSVs are read)."""
    p = options.preset
    if options.dataset == "square":
        from didae_xai.data.square import square_benchmark

        return square_benchmark(size=p.image_size, seed=options.seed, n_generator=p.n_generator)
    if options.dataset == "celeba":
        from didae_xai.data.celeba import celeba_benchmark

        return celeba_benchmark(options.data_root, image_size=p.image_size, n_generator=p.n_generator, seed=options.seed)
    from didae_xai.data.metadata_csv import metadata_benchmark

    return metadata_benchmark(options.data_root, image_size=p.image_size, n_generator=p.n_generator, seed=options.seed)


@dataclass(frozen=True)
class AtomPlan:
    """Which attributes the Procrustes atoms follow, and which atom is the task / the confounder."""

    attributes: tuple[str, ...]
    task: str
    confounder: str


def atom_plan(data: BenchmarkData) -> AtomPlan:
    """Square: its four continuous factors (ColorA is the task, ColorB the shortcut); otherwise the
    task and confounder labels themselves."""
    if set(SQUARE_ATOMS) <= set(data.generator.factors):
        return AtomPlan(SQUARE_ATOMS, "ColorA", "ColorB")
    return AtomPlan((data.task, data.confounder), data.task, data.confounder)


def fit_dictionaries(ae, data: BenchmarkData, plan: AtomPlan) -> dict:
    """Procrustes (supervised by the plan's attributes) and SVD dictionaries on generator embeddings."""
    split = data.generator.select_split("val")
    split = split if len(split) else data.generator
    split = with_label_factors(split, data)
    z = ae.embed(split.float_images())
    y = torch.stack([split.factors[a].float() for a in plan.attributes], 1)
    return {"procrustes": ProcrustesDictionary(names=list(plan.attributes)).fit(z, y),
            "svd": SVDDictionary(n_components=len(plan.attributes)).fit(z)}


@dataclass
class Comparison:
    """What explaining and correcting need: the data, the atom plan, every model, both dictionaries."""

    options: CompareOptions
    data: BenchmarkData
    plan: AtomPlan
    models: ComparisonModels
    dictionaries: dict


def prepare_comparison(options: CompareOptions, store: ArtifactStore | None = None, need_teacher: bool | None = None,
                       log: Log | None = print) -> Comparison:
    """Load the benchmark of ``options``, train or reuse every model, and fit both dictionaries.

    Example (the tiny models the documentation examples share):
        >>> run = prepare_comparison(CompareOptions(preset=PRESETS["tiny"], students=("probe",)), log=None)
        >>> run.models.students["probe"], run.dictionaries["procrustes"]
    """
    options.check()
    data = load_benchmark(options)
    plan = atom_plan(data)
    models = prepare_models(
        data, options.data_key(), options.preset, store or ArtifactStore(), options.students,
        need_teacher="didae_cfkd_oracle" in options.correctors if need_teacher is None else need_teacher,
        seed=options.seed, backbone=options.backbone, weights=options.weights, threads=torch.get_num_threads(),
        device=options.device, log=log or (lambda message: None),
    )
    return Comparison(options, data, plan, models, fit_dictionaries(models.autoencoder, data, plan))


def versions() -> dict:
    import diffusers
    import open_clip
    import sklearn
    import timm

    from didae_xai import __version__

    return {"didae_xai": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "diffusers": diffusers.__version__, "timm": timm.__version__, "open_clip": open_clip.__version__,
            "scikit_learn": sklearn.__version__, "platform": platform.platform()}


class StepCache:
    """Finished steps of a run, one JSON file each under ``<out>/steps/`` (what resume reads)."""

    def __init__(self, folder: Path, force: bool = False):
        self.folder, self.force = folder, force

    def run(self, name: str, key: dict, compute: Callable[[], dict], log: Log) -> dict:
        path = self.folder / f"{name}.json"
        digest = config_hash(key)
        if path.is_file() and not self.force:
            saved = load_json(path)
            if saved.get("key") == digest:
                log(f"[green]resumed[/green] {name} (finished in an earlier run)")
                return saved["result"]
        result = compute()
        save_json({"key": digest, "result": result}, path)
        return result


# ---------------------------------------------------------------------------------------- explain
def make_explainer(name: str, student, models: ComparisonModels, dictionaries: dict, preset: ComparePreset,
                   seed: int, probe=None, batch_size: int = 16, class_names=None, max_shift: float | None = None):
    """An explainer of the comparison by name; the gradient baselines drive the autoencoder's UNet.
    ``models`` needs only ``.autoencoder`` (a :class:`ComparisonModels` or the benchmark scripts' artifacts)."""
    from didae_xai.baselines import ACE, DiME, FastDiME
    from didae_xai.explain import DiDAE

    if name.startswith("didae_"):
        return DiDAE(student, models.autoencoder, dictionaries[name.split("_", 1)[1]], probe=probe,
                     internal_batch_size=batch_size, class_names=class_names, max_shift=max_shift)
    common = dict(internal_batch_size=batch_size, seed=seed, class_names=class_names)
    if name == "ace":
        return ACE(student, models.autoencoder, iterations=preset.ace_iterations, steps=preset.ace_steps,
                   respacing=preset.ace_respacing, **common)
    cls = DiME if name == "dime" else FastDiME
    return cls(student, models.autoencoder, tau=preset.tau, respacing=preset.respacing, scales=preset.guidance_scales,
               **common)


def warm_up(name: str, explainer, x: torch.Tensor, preset: ComparePreset, models: ComparisonModels, student, seed: int) -> None:
    """Run the method's code path once on two factuals so that the timed batch is warm."""
    if name.startswith("didae_"):
        explainer.explain(x[:2])
        return
    cheap = preset.replace(tau=2, ace_iterations=1)
    make_explainer(name, student, models, {}, cheap, seed).explain(x[:2])


def explain_step(name: str, student_name: str, student, models: ComparisonModels, dictionaries: dict,
                 factuals, train_images: torch.Tensor, plan: AtomPlan, preset: ComparePreset, surrogate, probe,
                 seed: int, figure: Path | None, max_shift: float | None = None) -> tuple[dict, object]:
    """Explain ``factuals`` with one explainer; flip rate, NAFR, cf/s (warm), and a grid figure."""
    slow = name in GRADIENT_EXPLAINERS
    n = preset.factuals_dime if name == "dime" else preset.factuals_slow if slow else preset.factuals
    x = factuals.float_images()[:n]
    explainer = make_explainer(name, student, models, dictionaries, preset, seed, probe=probe, max_shift=max_shift)
    if name.startswith("didae_") and probe is None:
        explainer.fit(train_images)
    warm_up(name, explainer, x, preset, models, student, seed)
    start = time.perf_counter()
    exp = explainer.explain(x)
    seconds = time.perf_counter() - start
    row = explanation_scores(exp, surrogate)
    row.update(cf_per_s=exp.timings["cf_per_s"], seconds=seconds, counterfactuals_per_factual=exp.flipped.shape[1])
    if name.startswith("didae_"):
        row["flip_rate_by_atom"] = exp.flip_rate_by_atom()
        row["probe_fidelity"] = explainer.probe.fidelity
        if name == "didae_procrustes" and factuals.masks is not None and plan.confounder == "ColorB":
            row["confounder_reveal"] = confounder_reveal(exp, factuals.subset(torch.arange(n)), exp.atom_names.index("ColorB"))
    else:
        if name == "ace":
            row["settings"] = {"iterations": preset.ace_iterations, "steps": preset.ace_steps, "respacing": preset.ace_respacing}
        else:
            row["settings"] = {"tau": preset.tau, "respacing": preset.respacing, "scales": list(explainer.scales)}
            row["flip_rate_by_scale"] = explainer.flip_rate_by_scale()
    if figure is not None:
        import matplotlib.pyplot as plt

        figure.parent.mkdir(parents=True, exist_ok=True)
        plt.close(exp.plot(max_rows=4, path=figure))
    return row, explainer


def confounder_reveal(exp, factuals, atom: int) -> float:
    """Square: share of factuals flipped by the confounder atom while the decoded foreground (the true
    class evidence, read inside the ground-truth mask) stays on the factual's side of the class boundary."""
    latent = square_oracle_latent(exp.counterfactuals[:, atom], factuals.masks)
    kept = (latent[:, 0] >= 0.5) == factuals.y.bool()
    return (exp.flipped[:, atom] & kept).float().mean().item()


# ---------------------------------------------------------------------------------------- correct
class ExplanationMemo:
    """Explain each distinct batch once: both CFKD teachers judge the same counterfactuals of the same
    training factuals, so the second corrector reuses the first one's explanations."""

    def __init__(self, explainer):
        self.explainer = explainer
        self._memo: dict = {}

    def explain(self, inputs: torch.Tensor, target=None):
        digest = hashlib.sha1(inputs.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        key = (digest, tuple(inputs.shape), None if target is None else str(torch.as_tensor(target).tolist()))
        if key not in self._memo:
            self._memo[key] = self.explainer.explain(inputs, target)
        return self._memo[key]

    def __getattr__(self, name: str):
        return getattr(self.explainer, name)


def make_corrector(name: str, explainer, dictionary, plan: AtomPlan, teacher=None, embedder=None, config=None,
                   max_factuals: int | None = None, seed: int = 0):
    """A corrector of the comparison by name (:data:`CORRECTORS`).

    Args:
        explainer: the explainer CFKD asks for counterfactuals (DiDAE, or a gradient baseline).
        dictionary: the Procrustes dictionary whose confounder atom the projection removes.
        plan: which atom is the task (the pre-clustered teacher's "true" atom) and which the confounder.
        teacher: the balanced-data teacher (``didae_cfkd_oracle`` only).
        embedder: the backbone that carries the atoms into an end-to-end student's feature space
            (projection; ``None`` for an FM probe, which reads the embedding itself).
        config: training of correctors that fine-tune (CFKD, GroupDRO); ``None``: their defaults.
        max_factuals: training factuals CFKD explains.
    """
    from didae_xai.correct import (CFKD, DFR, ERM, AClarc, GroupDRO, OracleTeacher, PClarc, PreclusteredTeacher,
                                   Projection, RRClarc)

    if name == "erm":
        return ERM()
    if name == "didae_cfkd_preclustered":
        return CFKD(explainer, PreclusteredTeacher((plan.task,)), config=config, max_factuals=max_factuals, seed=seed)
    if name == "didae_cfkd_oracle":
        if teacher is None:
            raise ValueError("didae_cfkd_oracle needs the teacher; it was not trained.")
        return CFKD(explainer, OracleTeacher(teacher), config=config, max_factuals=max_factuals, seed=seed)
    if name == "didae_projection":
        return Projection(dictionary=dictionary, atoms=(plan.confounder,), embedder=embedder)
    if name == "p_clarc":
        return PClarc()
    if name == "a_clarc":
        return AClarc()
    if name == "rr_clarc":
        return RRClarc()
    if name == "groupdro":
        return GroupDRO(config=config)
    if name == "dfr":
        return DFR(seed=seed)
    raise ValueError(f"Unknown corrector {name!r}; known: {', '.join(CORRECTORS)}.")


def correct_step(name: str, student_name: str, student, explainer, dictionary, models, data, plan, preset, seed,
                 baseline_aga: float) -> dict:
    from didae_xai.correct.base import has_trainable_body
    from didae_xai.correct.loop import FULL_CONFIG

    torch.manual_seed(seed)
    # End-to-end students fine-tune for the preset's epochs; probes train their head with the defaults.
    full = replace(FULL_CONFIG, epochs=preset.correct_epochs, seed=seed) if has_trainable_body(student) else None
    corrector = make_corrector(name, explainer, dictionary, plan, teacher=models.teacher,
                               embedder=None if student_name == "probe" else models.autoencoder.backbone, config=full,
                               max_factuals=preset.cfkd_factuals, seed=seed)
    return correction_row(name, corrector, student, data, baseline_aga)


def correction_row(name: str, corrector, student, data: BenchmarkData, baseline_aga: float) -> dict:
    """Correct ``student`` and score it on the balanced test set: the JSON row of one corrector
    (group accuracies, AGA, WGA, Gain, labels used, minutes; CFKD's counterfactual counts)."""
    from didae_xai.correct import CorrectionData, correct_and_evaluate

    row = correct_and_evaluate(corrector, student, CorrectionData.from_benchmark(data), data.test, baseline_aga=baseline_aga)
    row.pop("model")
    record = row.pop("record")
    if name.startswith("didae_cfkd"):
        row["cfkd"] = {k: record.get(k) for k in ("n_counterfactuals", "verdicts", "feedback_accuracy",
                                                 "n_train_counterfactuals", "train_counterfactuals_by_atom",
                                                 "selected_epoch", "explain_seconds")}
    return row


# ---------------------------------------------------------------------------------------- run
def step_models(keys: dict, student: str, name: str) -> dict:
    """The stored models a step's result depends on (its resume key): its student, the foundation model
    and the autoencoder (the dictionaries, DiDAE's decoder, the baselines' UNet), and the teacher for
    the oracle CFKD only; so that running fewer students or correctors does not redo the other steps."""
    wanted = {student, "fm", "autoencoder"} | ({"teacher"} if name == "didae_cfkd_oracle" else set())
    return {k: v for k, v in keys.items() if k in wanted}


def step_preset(preset: ComparePreset, name: str) -> dict:
    """The preset fields a step's result depends on (its resume key): all of them for the gradient
    baselines, all but theirs (:data:`GRADIENT_FIELDS`) for DiDAE and the correctors."""
    fields = preset.to_dict()
    if name not in GRADIENT_EXPLAINERS:
        for field_name in GRADIENT_FIELDS:
            fields.pop(field_name)
    return fields


def run_compare(
    options: CompareOptions,
    out: str | Path,
    store: ArtifactStore | None = None,
    log: Log = print,
) -> dict:
    """Run the whole comparison and write ``results.json``, ``report.md`` and the figures into ``out``.

    Returns the results dict (what ``results.json`` holds).
    """
    from didae_xai.benchmark.report import write_report

    options.check()
    p = options.preset
    if options.threads:
        torch.set_num_threads(options.threads)
    threads = torch.get_num_threads()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = store or ArtifactStore()
    steps = StepCache(out / "steps", force=store.force)
    start = time.perf_counter()

    log(f"[bold]didae-xai compare[/bold]: preset {p.name} ({p.description}); dataset {options.dataset}; "
        f"{threads} threads on {options.device}; artifacts in {store.root}")
    run = prepare_comparison(options, store, log=log)
    data, plan, models, dictionaries = run.data, run.plan, run.models, run.dictionaries
    train_images = data.train.float_images()
    train_minutes = (time.perf_counter() - start) / 60
    results: dict = {
        "config": options.to_dict(),
        "versions": versions(),
        "device": options.device,
        "threads": threads,
        "atoms": {"attributes": list(plan.attributes), "task": plan.task, "confounder": plan.confounder},
        "models": {name: {"key": models.keys[name], "cached": models.cached[name], "minutes": models.minutes[name]}
                   for name in models.keys},
        "students": {name: group_report(student.predict(data.test.float_images()), data.test.y, data.test.a)
                     for name, student in models.students.items()},
        "explain_student": options.primary_student,
        "explainers": {},
        "correctors": {},
        "surrogates": {},
    }
    if models.teacher is not None:
        results["teacher"] = group_report(models.teacher.predict(data.test.float_images()), data.test.y, data.test.a)

    # One balanced set of test factuals, ordered so that every prefix is balanced too: the slow
    # methods explain a prefix of what DiDAE explains, and the grids show the same first rows.
    per_group = -(-p.factuals // 4)
    pick = balanced_indices(data.test.y, data.test.a, per_group, seed=options.seed)
    pick = pick[round_robin_order(data.test.y[pick], data.test.a[pick])][: p.factuals]
    factuals = data.test.subset(pick)

    explain_start = time.perf_counter()
    explainers_by_student: dict = {}
    probes: dict = {}
    for student_name, student in models.students.items():
        surrogate, fidelity = prepare_surrogate(student_name, student, data, p, store, models.keys[student_name],
                                                seed=options.seed, device=options.device, log=log)
        results["surrogates"][student_name] = {"fidelity": fidelity}
        for name in options.explainers:
            if name in GRADIENT_EXPLAINERS and student_name != options.primary_student:
                continue  # the slow baselines explain the primary student only
            figure = out / "figures" / f"counterfactuals_{name}.png" if student_name == options.primary_student else None
            key = {"step": "explain", "name": name, "student": student_name, "preset": step_preset(p, name),
                   "models": step_models(models.keys, student_name, name),
                   "seed": options.seed, "max_shift": options.shift}

            def compute(name=name, student_name=student_name, student=student, figure=figure, surrogate=surrogate) -> dict:
                log(f"explaining the {student_name} student with {name}")
                row, explainer = explain_step(name, student_name, student, models, dictionaries, factuals, train_images, plan, p,
                                              surrogate, probes.get(student_name), options.seed, figure, options.shift)
                if name.startswith("didae_"):
                    probes.setdefault(student_name, explainer.probe)
                return row

            row = steps.run(f"explain__{student_name}__{name}", key, compute, log)
            explainers_by_student.setdefault(student_name, {})[name] = row
            if student_name == options.primary_student and figure is not None:
                row["figure"] = str(figure.relative_to(out))
    for name in options.explainers:
        if options.primary_student in explainers_by_student and name in explainers_by_student[options.primary_student]:
            entry = dict(explainers_by_student[options.primary_student][name])
            entry["by_student"] = {s: rows[name] for s, rows in explainers_by_student.items() if name in rows}
            results["explainers"][name] = entry
    explain_minutes = (time.perf_counter() - explain_start) / 60

    correct_start = time.perf_counter()
    from didae_xai.correct import evaluate

    for student_name, student in models.students.items():
        baseline = evaluate(student, data.test)["aga"]
        explainer = None
        if any(c.startswith("didae_cfkd") for c in options.correctors):
            explainer = make_explainer("didae_procrustes", student, models, dictionaries, p, options.seed,
                                       probe=probes.get(student_name), max_shift=options.shift)
            if explainer.probe is None:
                explainer.fit(train_images)
            explainer = ExplanationMemo(explainer)
        for name in options.correctors:
            key = {"step": "correct", "name": name, "student": student_name, "preset": step_preset(p, name),
                   "models": step_models(models.keys, student_name, name),
                   "seed": options.seed, "max_shift": options.shift}

            def compute(name=name, student_name=student_name, student=student, explainer=explainer, baseline=baseline) -> dict:
                log(f"correcting the {student_name} student with {name}")
                return correct_step(name, student_name, student, explainer, dictionaries["procrustes"], models, data,
                                    plan, p, options.seed, baseline)

            results["correctors"].setdefault(student_name, {})[name] = steps.run(
                f"correct__{student_name}__{name}", key, compute, log)
    correct_minutes = (time.perf_counter() - correct_start) / 60

    results["minutes"] = {"total": (time.perf_counter() - start) / 60, "models": train_minutes,
                          "explain": explain_minutes, "correct": correct_minutes, "trained": models.minutes}
    results["cpu_count"] = os.cpu_count()
    write_report(results, out)
    return results
