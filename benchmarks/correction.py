"""Correct both poisoned Square students with every corrector and score them on the balanced test set.

Reuses the artifacts of ``benchmarks/students.py --out DIR`` (``fm``, ``probe``, ``resnet``,
``teacher``) and ``benchmarks/autoencoder.py --out DIR`` (``autoencoder``). DiDAE counterfactuals
come from a Procrustes dictionary (ColorA, ColorB, PositionX, PositionY) fitted on the balanced
generator validation split. Correctors: ``erm``, ``didae_cfkd_preclustered`` (task atom ColorA true,
all others false), ``didae_cfkd_oracle`` (the teacher trained on balanced data), ``didae_projection``
(the ColorB atom projected out), ``p_clarc``, ``a_clarc``, ``rr_clarc``, ``groupdro``, ``dfr``.

``--cfkd-baselines dime,fastdime,ace`` adds ``<method>_cfkd_oracle``: the same CFKD with the oracle
teacher, fed by a gradient-based explainer instead of DiDAE (with the ``quick`` preset's settings: scales
8 to 50 for DiME/FastDiME, 200 PGD iterations for ACE), so that Gain compares the explainers. The pre-clustered
teacher needs named atoms, which these methods do not have.

    python benchmarks/correction.py --models runs/square32 --json OUT.json [--cfkd-baselines fastdime]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from didae_xai.benchmark import load_artifacts
from didae_xai.benchmark.compare import CORRECTORS, GRADIENT_EXPLAINERS, AtomPlan, correction_row, make_corrector, make_explainer
from didae_xai.benchmark.presets import PRESETS
from didae_xai.benchmark.report import PAPER_CLAIM
from didae_xai.correct import evaluate
from didae_xai.data.square import square_benchmark
from didae_xai.dictionary import ProcrustesDictionary
from didae_xai.explain import DiDAE

ATTRIBUTES = ["ColorA", "ColorB", "PositionX", "PositionY"]
PLAN = AtomPlan(tuple(ATTRIBUTES), task="ColorA", confounder="ColorB")
BASELINES = GRADIENT_EXPLAINERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="folder with fm/, probe/, resnet/, teacher/, autoencoder/")
    parser.add_argument("--json", help="write the figures to this file as well as stdout")
    parser.add_argument("--students", default="probe,resnet")
    parser.add_argument("--max-factuals", type=int, default=256, help="CFKD: training factuals explained")
    parser.add_argument("--max-shift", type=float, default=None,
                        help="DiDAE: bound each move to this many standard deviations of the data along the atom")
    parser.add_argument("--cfkd-baselines", default="",
                        help=f"comma-separated subset of {','.join(BASELINES)}: CFKD (oracle teacher) fed by these explainers too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    baselines = [b.strip() for b in args.cfkd_baselines.split(",") if b.strip()]
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        parser.error(f"unknown --cfkd-baselines {unknown}; choose from {', '.join(BASELINES)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = Path(args.models)

    artifacts = load_artifacts(models)
    teacher, ae = artifacts.teacher, artifacts.autoencoder
    if ae is None or teacher is None:
        raise SystemExit(f"{models} needs teacher/ and autoencoder/; see the module docstring.")
    data = square_benchmark(size=ae.image_size, seed=args.seed, n_generator=16000)
    fit_split = data.generator.select_split("val")
    dictionary = ProcrustesDictionary(names=ATTRIBUTES).fit(
        ae.embed(fit_split.images), torch.stack([fit_split.factors[a] for a in ATTRIBUTES], 1)
    )
    result: dict = {"paper_claim": PAPER_CLAIM, "threads": args.threads, "seed": args.seed, "max_shift": args.max_shift}

    for name in args.students.split(","):
        student = artifacts.students[name]
        baseline = evaluate(student, data.test)["aga"]
        explainer = DiDAE(student, ae, dictionary, max_shift=args.max_shift).fit(data.train.float_images())
        embedder = None if name == "probe" else ae.backbone
        result[name] = {"probe_fidelity": explainer.probe.fidelity}
        jobs = [(cname, cname, explainer) for cname in CORRECTORS]
        jobs += [(f"{b}_cfkd_oracle", "didae_cfkd_oracle", make_explainer(b, student, artifacts, {}, PRESETS["quick"], args.seed))
                 for b in baselines]
        for cname, kind, source in jobs:
            corrector = make_corrector(kind, source, dictionary, PLAN, teacher=teacher, embedder=embedder,
                                       max_factuals=args.max_factuals, seed=args.seed)
            row = result[name][cname] = correction_row(kind, corrector, student, data, baseline)
            print(f"{name:7s} {cname:24s} AGA {row['aga']:.3f}  WGA {row['wga']:.3f}  gain {row['gain']:+.3f}  "
                  f"{row['minutes']:.2f} min", flush=True)

    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
