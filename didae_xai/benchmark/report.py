"""``report.md``, the figures and the terminal tables of a comparison, all rendered from ``results.json``.

Everything here reads the results dict only, so ``didae-xai report`` re-renders a finished run
without touching a model. The paper's numbers (SPEC §9, measured on a GPU) sit in a column beside
ours; NAFR and Gain are shown in percent as in the paper, cf/s as measured.
"""

from __future__ import annotations

from pathlib import Path

from didae_xai.benchmark.presets import PRESETS
from didae_xai.io import save_json

#: SPEC §9: the paper's seed table (NAFR %, Gain %, counterfactuals per second on a GPU).
PAPER = {
    "square": {
        "resnet": {
            "dime": {"nafr": 6.0, "gain": 0.0, "cf_per_s": 0.02},
            "ace": {"nafr": 0.0, "gain": 0.0, "cf_per_s": 0.02},
            "fastdime": {"nafr": 6.5, "gain": 8.8, "cf_per_s": 2.95},
            "didae_procrustes": {"nafr": 17.5, "gain": 82.6, "cf_per_s": 64.18},
            "didae_svd": {"nafr": 17.5, "gain": 75.7, "cf_per_s": 64.18},
        },
        "probe": {
            "fastdime": {"nafr": 5.0, "gain": 0.0, "cf_per_s": 2.95},
            "didae_procrustes": {"nafr": 22.5, "gain": 70.4, "cf_per_s": 64.18},
            "didae_svd": {"nafr": 10.0, "gain": 74.4, "cf_per_s": 64.18},
        },
    },
    "celeba": {
        "any": {
            "didae_procrustes": {"nafr": 49.0, "gain": 38.5, "cf_per_s": 12.04},
            "ace": {"nafr": 11.5, "gain": 31.5, "cf_per_s": 0.01},
            "fastdime": {"nafr": 11.5, "gain": 23.8, "cf_per_s": 1.25},
        },
    },
}
PAPER_CLAIM = "DiDAE-CFKD ahead of GroupDRO, DFR, P-ClArC and RR-ClArC in average group accuracy (SPEC §9)"
LABELS = {"didae_procrustes": "Procrustes-DiDAE", "didae_svd": "SVD-DiDAE", "dime": "DiME", "fastdime": "FastDiME",
          "ace": "ACE", "erm": "ERM", "didae_cfkd_preclustered": "DiDAE-CFKD (pre-clustered)",
          "didae_cfkd_oracle": "DiDAE-CFKD (oracle teacher)", "didae_projection": "DiDAE projection",
          "p_clarc": "P-ClArC", "a_clarc": "A-ClArC", "rr_clarc": "RR-ClArC", "groupdro": "GroupDRO", "dfr": "DFR"}


def paper_row(results: dict, student: str, method: str) -> dict:
    table = PAPER.get(results["config"]["dataset"], {})
    return table.get(student, table.get("any", {})).get(method, {})


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}" if value < 1 else f"{value:.{digits}f}"


def _paper(value) -> str:
    return "—" if value is None else f"{value:g}"


def explainer_table(results: dict) -> tuple[str, list[str], list[list[str]]]:
    student = results["explain_student"]
    header = ["explainer", "factuals", "flip rate %", "NAFR %", "paper NAFR %", "cf/s", "paper cf/s", "DiDAE speed-up"]
    rows = []
    didae = results["explainers"].get("didae_procrustes", {}).get("cf_per_s")
    for name, row in results["explainers"].items():
        ref = paper_row(results, student, name)
        speedup = f"{didae / row['cf_per_s']:.0f}×" if didae and not name.startswith("didae") and row["cf_per_s"] else ""
        rows.append([LABELS.get(name, name), str(row["factuals"]), _pct(row["flip_rate"]), _pct(row["nafr"]),
                     _paper(ref.get("nafr")), f"{row['cf_per_s']:.3g}", _paper(ref.get("cf_per_s")), speedup])
    return f"Explainers on the {student} student", header, rows


def didae_by_student_table(results: dict) -> tuple[str, list[str], list[list[str]]] | None:
    header = ["student", "explainer", "flip rate %", "NAFR %", "paper NAFR %", "cf/s", "probe fidelity"]
    rows = []
    for name, entry in results["explainers"].items():
        if not name.startswith("didae"):
            continue
        for student, row in entry.get("by_student", {}).items():
            rows.append([student, LABELS[name], _pct(row["flip_rate"]), _pct(row["nafr"]),
                         _paper(paper_row(results, student, name).get("nafr")), f"{row['cf_per_s']:.3g}",
                         _num(row.get("probe_fidelity"))])
    return ("DiDAE on every student", header, rows) if rows else None


def corrector_table(results: dict, student: str) -> tuple[str, list[str], list[list[str]]]:
    header = ["corrector", "labels used", "AGA %", "WGA %", "Gain %", "paper Gain %", "minutes"]
    rows = []
    for name, row in results["correctors"][student].items():
        ref = paper_row(results, student, "didae_procrustes") if name.startswith("didae_cfkd") else {}
        rows.append([LABELS.get(name, name), ", ".join(row["labels_used"]), _pct(row["aga"]), _pct(row["wga"]),
                     _pct(row["gain"]) if name != "erm" else "—", _paper(ref.get("gain")), f"{row['minutes']:.2f}"])
    return f"Correctors on the {student} student (balanced test set)", header, rows


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every table of the report as ``(title, header, rows)``: for Markdown and for the terminal."""
    out = []
    if results["explainers"]:
        out.append(explainer_table(results))
        extra = didae_by_student_table(results)
        if extra:
            out.append(extra)
    for student in results["correctors"]:
        out.append(corrector_table(results, student))
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- figures
def plot_group_accuracies(results: dict, student: str, path: Path):
    """Grouped bars: the four test-group accuracies of every corrector of one student."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["correctors"][student]
    names = list(rows)
    groups = sorted(next(iter(rows.values()))["group_accuracy"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 3.6))
    width = 0.8 / len(groups)
    for j, g in enumerate(groups):
        values = [rows[n]["group_accuracy"][g] for n in names]
        ax.bar(np.arange(len(names)) + (j - (len(groups) - 1) / 2) * width, values, width, label=g)
    ax.set_xticks(np.arange(len(names)), [LABELS.get(n, n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Group accuracies after correction: {student} student")
    ax.legend(fontsize=7, ncol=len(groups), loc="lower right", title="group (y, a)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speed(results: dict, path: Path):
    """Counterfactuals per second of every explainer on a log axis, the paper's beside ours."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["explainers"])
    ours = [results["explainers"][n]["cf_per_s"] for n in names]
    paper = [paper_row(results, results["explain_student"], n).get("cf_per_s", np.nan) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    y = np.arange(len(names))
    ax.barh(y - 0.2, ours, 0.4, label=f"ours ({results['device']}, {results['threads']} threads)")
    ax.barh(y + 0.2, paper, 0.4, label="paper (GPU)", alpha=0.6)
    ax.set_yticks(y, [LABELS.get(n, n) for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("counterfactuals per second (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- report
def render_markdown(results: dict, figures: list[str]) -> str:
    cfg, preset = results["config"], results["config"]["preset"]
    minutes = results.get("minutes", {})
    lines = [
        f"# didae-xai compare: {cfg['dataset']}, preset `{preset['name']}`",
        "",
        f"{preset['description']}. Seed {cfg['seed']}, {results['threads']} threads on {results['device']}, "
        f"{minutes.get('total', float('nan')):.1f} minutes in all (models {minutes.get('models', 0):.1f}, "
        f"explaining {minutes.get('explain', 0):.1f}, correcting {minutes.get('correct', 0):.1f}). "
        f"didae-xai {results['versions']['didae_xai']}, torch {results['versions']['torch']}.",
        "",
        "The paper's numbers (SPEC §9) were measured on a GPU at the reference sizes; ours come from this run. "
        "NAFR and Gain are in percent. Gain = (AGA after − AGA before) / (1 − AGA before).",
        "",
        "## The poisoned students before correction",
        "",
        markdown_table(["model", "AGA %", "WGA %", "accuracy %"],
                       [[name, _pct(r["aga"]), _pct(r["wga"]), _pct(r["accuracy"])] for name, r in
                        list(results["students"].items()) + ([("teacher (balanced data)", results["teacher"])]
                                                             if "teacher" in results else [])]),
        "",
    ]
    slow = {n: r["factuals"] for n, r in results["explainers"].items() if not n.startswith("didae")}
    for title, header, rows in tables(results):
        lines += [f"## {title}", "", markdown_table(header, rows), ""]
        if title.startswith("Explainers"):
            atoms = results.get("atoms", {})
            lines.append(
                f"DiDAE returns one counterfactual per atom ({', '.join(atoms.get('attributes', []))}); the gradient "
                "baselines one per factual. "
                + ("The slow gradient baselines explain fewer factuals (a balanced prefix of DiDAE's): "
                   + ", ".join(f"{LABELS[n]} {k}" for n, k in slow.items()) + ". " if slow else "")
                + "cf/s is measured on a warm batch. NAFR counts counterfactuals that flip both the student and an "
                "adversarially distilled surrogate. "
                + (f"DiDAE's moves are bounded to {cfg['max_shift']:g} standard deviations of the data along each atom "
                   "(a boundary out of reach counts as no flip; `--max-shift 0` gives the paper's unbounded reflection)."
                   if cfg.get("max_shift") else "DiDAE reflects without a bound, as in the paper."))
            scales_note = guidance_scales_note(results)
            if scales_note:
                lines.append(scales_note)
            reveal = results["explainers"].get("didae_procrustes", {}).get("confounder_reveal")
            if reveal is not None:
                lines.append(f"Clever Hans reveal (Procrustes-DiDAE, {atoms.get('confounder')} atom): {_pct(reveal)} % of "
                             "the factuals flip while the true foreground stays on the factual's side.")
            lines.append("")
        if title.startswith("Correctors"):
            lines += [f"Paper claim: {PAPER_CLAIM}. The paper's Gain is that of CFKD fed by Procrustes-DiDAE.", ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
        lines.append("")
    lines += ["## Reproduce", "", "```bash", command_line(results), "```", ""]
    return "\n".join(lines)


def guidance_scales_note(results: dict) -> str | None:
    """DiME/FastDiME: the classifier scales tried and the cumulative flip rate after each, so that the
    figure with the published scales (up to 15) stands beside the run's."""
    parts = []
    for name, row in results["explainers"].items():
        by_scale = row.get("flip_rate_by_scale")
        if by_scale:
            parts.append(f"{LABELS.get(name, name)} " + ", ".join(f"{s} → {_pct(v)} %" for s, v in by_scale.items()))
    if not parts:
        return None
    return ("Classifier scales of DiME/FastDiME are tried in turn until the prediction flips (published: 8, 10, 15); "
            "flip rate reached by each scale: " + "; ".join(parts) + ".")


def command_line(results: dict) -> str:
    cfg = results["config"]
    parts = ["didae-xai compare", f"--preset {cfg['preset']['name']}", f"--dataset {cfg['dataset']}", f"--seed {cfg['seed']}"]
    if cfg.get("data_root"):
        parts.append(f"--data-root {cfg['data_root']}")
    parts.append(f"--max-shift {cfg['max_shift']:g}" if cfg.get("max_shift") else "--max-shift 0")
    scales = cfg["preset"].get("guidance_scales")
    named = PRESETS.get(cfg["preset"]["name"])
    if scales and named is not None and tuple(scales) != named.guidance_scales:
        parts.append("--guidance-scales " + ",".join(f"{s:g}" for s in scales))
    if cfg.get("backbone"):
        parts.append(f"--backbone {cfg['backbone']} --weights {cfg['weights']}")
    return " ".join(parts)


def write_report(results: dict, out: str | Path) -> list[Path]:
    """Write ``results.json``, the figures and ``report.md`` into ``out``; return the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures = sorted(str(p.relative_to(out)) for p in (out / "figures").glob("counterfactuals_*.png"))
    for student in results["correctors"]:
        path = out / "figures" / f"group_accuracies_{student}.png"
        plot_group_accuracies(results, student, path)
        figures.append(str(path.relative_to(out)))
    if results["explainers"]:
        plot_speed(results, out / "figures" / "cf_per_s.png")
        figures.append("figures/cf_per_s.png")
    results["figures"] = figures
    written = [save_json(results, out / "results.json")]
    report = out / "report.md"
    report.write_text(render_markdown(results, figures))
    return written + [report] + [out / f for f in figures]
