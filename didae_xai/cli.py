"""The ``didae-xai`` command line (Typer). Thin: it parses, calls the library, prints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from didae_xai import __version__, registry

app = typer.Typer(
    name="didae-xai",
    help="Gradient-free counterfactual explanation and correction of image classifiers (DiDAE).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"didae-xai {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Gradient-free counterfactual explanation and correction of image classifiers (DiDAE)."""


@app.command("list")
def list_registered(
    kind: Optional[str] = typer.Argument(
        None, help=f"Only this kind: one of {', '.join(registry.KINDS)}. Default: all kinds."
    ),
) -> None:
    """List the registered backbones, datasets, explainers and correctors (plugins included)."""
    if kind is not None and kind not in registry.KINDS:
        console.print(f"[red]Unknown kind {kind!r}.[/red] Choose one of: {', '.join(registry.KINDS)}.")
        raise typer.Exit(code=2)
    table = Table(title="didae-xai registry")
    table.add_column("kind")
    table.add_column("name", style="bold")
    table.add_column("from")
    table.add_column("description")
    for entry in registry.entries(kind):
        table.add_row(entry.kind, entry.name, entry.source, entry.description)
    console.print(table)


# ---------------------------------------------------------------------------------------- compare
def _names(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Parse a comma-separated list ("all" for every known name); unknown names are a usage error."""
    if value.strip() in ("all", ""):
        return known if value.strip() == "all" else ()
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(known)}.")
    return names


def _scales(value: str) -> tuple[float, ...]:
    """Parse ``--guidance-scales`` ("8,10,15"): distinct positive numbers, tried in the given order."""
    from didae_xai.baselines.dime import parse_scales

    try:
        return tuple(parse_scales(value))
    except ValueError:
        raise typer.BadParameter(f"--guidance-scales needs comma-separated distinct positive numbers such as 8,10,15; "
                                 f"got {value!r}.") from None


def _options(preset: str, dataset: str, data_root: Optional[Path], explainers: str, correctors: str, students: str,
             explain_student: Optional[str], seed: int, device: str, threads: Optional[int], backbone: Optional[str],
             weights: Optional[Path], allow_cpu: bool, max_shift: Optional[float] = None,
             guidance_scales: Optional[str] = None):
    import torch

    from didae_xai.benchmark.compare import CORRECTORS, EXPLAINERS, STUDENTS, CompareOptions
    from didae_xai.benchmark.presets import PRESETS

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    chosen = PRESETS[preset]
    if guidance_scales is not None:
        chosen = chosen.replace(guidance_scales=_scales(guidance_scales))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if chosen.needs_gpu and device == "cpu" and not allow_cpu:
        console.print(f"[red]Preset {preset!r} is sized for a GPU[/red] (it would take days on CPU) and this run is on "
                      "the CPU. Use --preset quick, run on a machine with a CUDA GPU, or pass --allow-cpu to insist.")
        raise typer.Exit(code=2)
    try:
        return CompareOptions(
            preset=chosen, dataset=dataset, data_root=str(data_root) if data_root else None,
            explainers=_names(explainers, EXPLAINERS, "explainer"), correctors=_names(correctors, CORRECTORS, "corrector"),
            students=_names(students, STUDENTS, "student"), explain_student=explain_student, seed=seed, device=device,
            threads=threads, backbone=backbone, weights=str(weights) if weights else None, max_shift=max_shift,
        ).check()
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(code=2) from None


PRESET_HELP = "Run size: smoke (a minute or two, checks the pipeline), tiny (small models that already show the shortcut), quick (Square 32x32 in <20 min on 2 CPU cores), paper (reference sizes, GPU)."
OPT_PRESET = typer.Option("quick", "--preset", "-p", help=PRESET_HELP)
OPT_DATASET = typer.Option("square", "--dataset", "-d", help="square (generated), celeba or metadata_csv (need --data-root).")
OPT_DATA_ROOT = typer.Option(None, "--data-root", help="Local dataset folder: CelebA's root (holding celeba/) or a folder with metadata.csv.")
OPT_EXPLAINERS = typer.Option("all", "--explainers", "-e", help="Comma-separated: didae_procrustes, didae_svd, dime, fastdime, ace; 'all' (default).")
OPT_CORRECTORS = typer.Option("all", "--correctors", "-c", help="Comma-separated: erm, didae_cfkd_preclustered, didae_cfkd_oracle, didae_projection, p_clarc, a_clarc, rr_clarc, groupdro, dfr; 'all' (default).")
OPT_STUDENTS = typer.Option("probe,resnet", "--students", "-s", help="Poisoned students to explain and correct: probe (linear probe on the FM), resnet (end-to-end ResNet-18).")
OPT_EXPLAIN_STUDENT = typer.Option(None, "--explain-student", help="Student whose explanations fill the explainer table (default: resnet). The gradient baselines explain only this one.")
OPT_OUT = typer.Option(Path("runs/compare"), "--out", "-o", help="Output folder for results.json, report.md and figures/.")
OPT_SEED = typer.Option(0, "--seed", help="Seeds data, training and sampling.")
OPT_DEVICE = typer.Option("auto", "--device", help="cpu, cuda, or auto (cuda when PyTorch sees a GPU).")
OPT_THREADS = typer.Option(None, "--threads", help="CPU threads for PyTorch (default: PyTorch's choice).")
OPT_STORE = typer.Option(None, "--store", help="Artifact store (default: $DIDAE_XAI_HOME/artifacts or ~/.cache/didae-xai/artifacts).")
OPT_FORCE = typer.Option(False, "--force", help="Retrain every model and redo every step instead of reusing the store and the finished steps in --out.")
OPT_BACKBONE = typer.Option(None, "--backbone", help="Use a frozen foundation model instead of training one: timm:<model> or open_clip:<model>, with --weights.")
OPT_WEIGHTS = typer.Option(None, "--weights", help="Local weight file of --backbone (nothing is downloaded).")
OPT_ALLOW_CPU = typer.Option(False, "--allow-cpu", help="Run a GPU-sized preset on the CPU anyway.")
OPT_SCALES = typer.Option(None, "--guidance-scales", help="DiME/FastDiME: classifier scales tried in turn until the prediction flips, e.g. 8,10,15 (the published ones); default: the preset's (quick continues them to 20,30,50, the others use the published).")
OPT_MAX_SHIFT = typer.Option(None, "--max-shift", help="DiDAE: bound each move to this many standard deviations of the data along the atom; 0 = unbounded, the paper's reflection (default: the preset's: 3 for smoke and quick, unbounded for paper).")


def _print_tables(results: dict) -> None:
    from didae_xai.benchmark.report import tables

    for title, header, rows in tables(results):
        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h in ("explainer", "corrector", "labels used", "student") else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _run(options, out: Path, store: Optional[Path], force: bool) -> dict:
    from didae_xai.benchmark.compare import run_compare
    from didae_xai.benchmark.store import ArtifactStore

    try:
        results = run_compare(options, out, ArtifactStore(store, force=force), log=console.print)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(code=1) from None
    _print_tables(results)
    console.print(f"Report: [bold]{out / 'report.md'}[/bold] ({results['minutes']['total']:.1f} min)")
    return results


@app.command()
def compare(
    preset: str = OPT_PRESET, dataset: str = OPT_DATASET, data_root: Optional[Path] = OPT_DATA_ROOT,
    explainers: str = OPT_EXPLAINERS, correctors: str = OPT_CORRECTORS, students: str = OPT_STUDENTS,
    explain_student: Optional[str] = OPT_EXPLAIN_STUDENT, out: Path = OPT_OUT, seed: int = OPT_SEED,
    device: str = OPT_DEVICE, threads: Optional[int] = OPT_THREADS, store: Optional[Path] = OPT_STORE,
    force: bool = OPT_FORCE, backbone: Optional[str] = OPT_BACKBONE, weights: Optional[Path] = OPT_WEIGHTS,
    allow_cpu: bool = OPT_ALLOW_CPU, max_shift: Optional[float] = OPT_MAX_SHIFT,
    guidance_scales: Optional[str] = OPT_SCALES,
) -> None:
    """Head-to-head benchmark: train or reuse every model, explain, correct, and write the report into --out.

    Trains (or reuses from the store) every model, explains the same test factuals with every explainer,
    corrects every student with every corrector, and writes results.json, report.md and figures/.
    """
    options = _options(preset, dataset, data_root, explainers, correctors, students, explain_student, seed, device,
                       threads, backbone, weights, allow_cpu, max_shift, guidance_scales)
    _run(options, out, store, force)


@app.command()
def correct(
    preset: str = OPT_PRESET, dataset: str = OPT_DATASET, data_root: Optional[Path] = OPT_DATA_ROOT,
    correctors: str = OPT_CORRECTORS, students: str = OPT_STUDENTS, out: Path = typer.Option(Path("runs/correct"), "--out", "-o", help="Output folder."),
    seed: int = OPT_SEED, device: str = OPT_DEVICE, threads: Optional[int] = OPT_THREADS,
    store: Optional[Path] = OPT_STORE, force: bool = OPT_FORCE, backbone: Optional[str] = OPT_BACKBONE,
    weights: Optional[Path] = OPT_WEIGHTS, allow_cpu: bool = OPT_ALLOW_CPU, max_shift: Optional[float] = OPT_MAX_SHIFT,
) -> None:
    """Correct the poisoned students with the chosen correctors only (no explainer comparison); same store and report."""
    options = _options(preset, dataset, data_root, "", correctors, students, None, seed, device, threads, backbone,
                       weights, allow_cpu, max_shift)
    _run(options, out, store, force)


@app.command()
def train(
    preset: str = OPT_PRESET, dataset: str = OPT_DATASET, data_root: Optional[Path] = OPT_DATA_ROOT,
    students: str = OPT_STUDENTS, seed: int = OPT_SEED, device: str = OPT_DEVICE, threads: Optional[int] = OPT_THREADS,
    store: Optional[Path] = OPT_STORE, force: bool = OPT_FORCE, backbone: Optional[str] = OPT_BACKBONE,
    weights: Optional[Path] = OPT_WEIGHTS, allow_cpu: bool = OPT_ALLOW_CPU,
) -> None:
    """Train (or find in the store) the foundation model, students, teacher and autoencoder of a preset."""
    import torch

    from didae_xai.benchmark.compare import prepare_comparison
    from didae_xai.benchmark.store import ArtifactStore

    options = _options(preset, dataset, data_root, "", "", students, None, seed, device, threads, backbone, weights, allow_cpu)
    if options.threads:
        torch.set_num_threads(options.threads)
    artifacts = ArtifactStore(store, force=force)
    models = prepare_comparison(options, artifacts, need_teacher=True, log=console.print).models
    table = Table(title=f"Models of preset {preset} in {artifacts.root}")
    for column in ("model", "key", "from", "minutes"):
        table.add_column(column)
    for name, key in models.keys.items():
        table.add_row(name, key, "store" if models.cached[name] else "trained now", f"{models.minutes[name]:.2f}")
    console.print(table)


@app.command()
def explain(
    images: list[Path] = typer.Argument(..., help="Image files (PNG/JPEG) to explain; resized to the preset's size."),
    student: str = typer.Option("resnet", "--student", help="Stored student to explain: probe or resnet."),
    model: Optional[Path] = typer.Option(None, "--model", help="Explain this saved classifier (a save_classifier folder) instead of a stored student."),
    dictionary: str = typer.Option("procrustes", "--dictionary", help="procrustes or svd."),
    preset: str = OPT_PRESET, dataset: str = OPT_DATASET, data_root: Optional[Path] = OPT_DATA_ROOT,
    out: Path = typer.Option(Path("runs/explain"), "--out", "-o", help="Where the grid (grid.png) and the explanation go."),
    seed: int = OPT_SEED, device: str = OPT_DEVICE, threads: Optional[int] = OPT_THREADS,
    store: Optional[Path] = OPT_STORE, backbone: Optional[str] = OPT_BACKBONE, weights: Optional[Path] = OPT_WEIGHTS,
    allow_cpu: bool = OPT_ALLOW_CPU,
) -> None:
    """Explain image files with DiDAE using the preset's stored models (trained first if missing); writes grid.png."""
    import torch

    from didae_xai.benchmark.compare import make_explainer, prepare_comparison
    from didae_xai.benchmark.store import ArtifactStore
    from didae_xai.data.metadata_csv import load_images
    from didae_xai.models import load_classifier

    if dictionary not in ("procrustes", "svd"):
        raise typer.BadParameter(f"--dictionary must be procrustes or svd, got {dictionary!r}.")
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        console.print(f"[red]No such image file: {', '.join(missing)}[/red]")
        raise typer.Exit(code=2)
    options = _options(preset, dataset, data_root, "", "", student if model is None else "probe", None, seed, device,
                       threads, backbone, weights, allow_cpu)
    if options.threads:
        torch.set_num_threads(options.threads)
    run = prepare_comparison(options, ArtifactStore(store), need_teacher=False, log=console.print)
    classifier = load_classifier(model) if model is not None else run.models.students[student]
    x = load_images(list(images), options.preset.image_size, center_crop=False).float() / 255.0
    explainer = make_explainer(f"didae_{dictionary}", classifier, run.models, run.dictionaries, options.preset, seed,
                               max_shift=options.shift).fit(run.data.train.float_images())
    explanation = explainer.explain(x)
    out.mkdir(parents=True, exist_ok=True)
    explanation.plot(max_rows=len(x), path=out / "grid.png")
    explanation.save(out / "explanation")
    console.print(f"{len(x)} images, {explanation.flipped.shape[1]} counterfactuals each, flip rate "
                  f"{explanation.flipped.float().mean().item():.2f}; grid: [bold]{out / 'grid.png'}[/bold]")


@app.command()
def report(
    folder: Path = typer.Argument(..., help="A compare output folder holding results.json."),
) -> None:
    """Re-render report.md, the figures and the tables from a finished run's results.json."""
    from didae_xai.benchmark.report import write_report
    from didae_xai.io import load_json

    path = folder / "results.json"
    if not path.is_file():
        console.print(f"[red]No results.json in {folder}[/red]: run `didae-xai compare --out {folder}` first.")
        raise typer.Exit(code=2)
    results = load_json(path)
    write_report(results, folder)
    _print_tables(results)
    console.print(f"Report: [bold]{folder / 'report.md'}[/bold]")


if __name__ == "__main__":  # pragma: no cover
    app()
