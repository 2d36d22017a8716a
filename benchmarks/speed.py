"""Counterfactuals per second of DiDAE (Procrustes, SVD), DiME, FastDiME and ACE in one run, plus flips.

All five explain the same poisoned Square student with the same diffusion autoencoder (the baselines
drive its UNet, unconditionally by default), on the same machine, one after the other, with the same
factuals (balanced over the four groups) and the same batch size where the method allows. Reuses
the artifacts of ``benchmarks/students.py --out DIR`` (``fm``, ``probe``, ``resnet``) and
``benchmarks/autoencoder.py --out DIR`` (``DIR/autoencoder``).

- ``cf_per_s.<method>``: counterfactuals returned / wall time of explaining (classification,
  encoding or guided sampling, decoding, scoring), on warm batches: every method first explains two
  factuals at a reduced setting that touches the same code, and is then timed. DiDAE returns K = 4
  counterfactuals per factual (one per atom) from one encode and one batched decode; the baselines
  one per factual.
- ``ratio_didae_over.<baseline>``: cf/s of Procrustes-DiDAE over the baseline's
  (``ratio_didae_svd_over`` for SVD-DiDAE).
- ``flip_rate.<method>``: share of counterfactuals the student assigns to the target (the other
  class); ``nafr.<method>``: share that also flips an adversarially distilled surrogate.
  ``flip_rate_any`` / ``nafr_any``: share of factuals with at least one such counterfactual.
- ``factuals.<method>``: DiME is ~30x slower than FastDiME per counterfactual; it runs on the first
  ``--factuals-slow`` factuals (balanced), the others on ``--factuals``; ``on_slow_factuals`` holds
  every method's figures on that common subset.
- ``flip_rate_by_scale.<dime|fastdime>``: the flip rate reached by each classifier scale (cumulative;
  the value at 15 is what the published scales 8, 10, 15 alone give).
- Baseline settings: DiME / FastDiME tau = 60 of 200 respaced steps (the UNet's T = 1000: every 5th
  training step), scales 8, 10, 15 continued to 20, 30, 50 (``--scales``; ``EXTENDED_SCALES``), L1
  0.05, FastDiME masking after 30 steps (dilation 5, threshold 0.15); ACE 5 of 50 respaced steps,
  PGD step 1/255, L1 0.001, dilation 15, threshold 0.15 and 200 iterations (``--ace-iterations``; the
  reference's 50 cannot reach Square's class boundary).
- ``threads``, ``steps`` (per method), ``batch_size`` (``batch_size_by_method``), ``device``.

    python benchmarks/speed.py --models runs/square32 --json OUT.json [--student resnet] [--factuals 32]
        [--factuals-slow 8] [--batch-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from didae_xai.baselines import ACE, EXTENDED_SCALES, DiME, FastDiME
from didae_xai.baselines.dime import parse_scales
from didae_xai.benchmark import load_artifacts
from didae_xai.data.poisoning import balanced_indices, round_robin_order
from didae_xai.data.square import square_benchmark
from didae_xai.dictionary import ProcrustesDictionary, SVDDictionary
from didae_xai.explain import DiDAE
from didae_xai.metrics import distill_surrogate, explanation_scores
from didae_xai.metrics.surrogate import SURROGATE_CPU

ATTRIBUTES = ["ColorA", "ColorB", "PositionX", "PositionY"]
METHODS = ("didae_procrustes", "didae_svd", "dime", "fastdime", "ace")
BASELINES = ("dime", "fastdime", "ace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="folder with fm/, probe/, resnet/ and autoencoder/")
    parser.add_argument("--json", help="write the figures to this file as well as stdout")
    parser.add_argument("--student", choices=("resnet", "probe"), default="resnet", help="the poisoned student explained")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--factuals", type=int, default=32, help="test factuals (balanced) for DiDAE, FastDiME, ACE")
    parser.add_argument("--factuals-slow", type=int, default=8, help="factuals for DiME (the first of the above, balanced)")
    parser.add_argument("--batch-size", type=int, default=16, help="factuals per batch for every method")
    parser.add_argument("--steps", type=int, default=None, help="DiDAE's DDIM steps (default: the autoencoder's)")
    parser.add_argument("--tau", type=int, default=60, help="DiME/FastDiME reverse steps")
    parser.add_argument("--respacing", type=int, default=200, help="DiME/FastDiME respaced steps")
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in EXTENDED_SCALES),
                        help="DiME/FastDiME classifier scales tried in turn: the published 8,10,15 continued to 50, "
                             "with which FastDiME reaches Square's poisoned ResNet's boundary; flip_rate_by_scale "
                             "gives the figure at 15 too")
    parser.add_argument("--ace-iterations", type=int, default=200,
                        help="ACE's PGD iterations: 50 (CelebA) / 100 (ImageNet) in the reference; with steps of 1/255 "
                             "they bound every pixel's change by iterations/255, and Square's classes lie 0.25-0.5 away "
                             "in intensity: 200 (see didae_xai/baselines/ace.py)")
    parser.add_argument("--ace-steps", type=int, default=5)
    parser.add_argument("--ace-respacing", type=int, default=50)
    parser.add_argument("--condition", choices=("none", "factual"), default="none", help="baselines' UNet conditioning")
    parser.add_argument("--surrogate-epochs", type=int, default=SURROGATE_CPU.epochs)
    parser.add_argument("--n-generator", type=int, default=16000, help="balanced generator images (dictionary fitting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    try:
        scales = parse_scales(args.scales)
    except ValueError as err:
        parser.error(f"--scales: {err}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if not 1 <= args.factuals_slow <= args.factuals:
        parser.error("--factuals-slow must lie in [1, --factuals]")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    models = Path(args.models)

    artifacts = load_artifacts(models, batch_size=args.batch_size)
    ae = artifacts.autoencoder
    if ae is None or args.student not in artifacts.students:
        raise SystemExit(f"{models} needs {args.student}/ and autoencoder/; see the module docstring.")
    student = artifacts.students[args.student]
    if args.steps:
        ae.steps = args.steps
    size = ae.image_size
    data = square_benchmark(size=size, seed=args.seed, n_generator=args.n_generator)

    per_group = -(-args.factuals // 4)
    pick = balanced_indices(data.test.y, data.test.a, per_group, seed=args.seed)
    pick = pick[round_robin_order(data.test.y[pick], data.test.a[pick])][: args.factuals]
    x = data.test.subset(pick).float_images()
    n_slow = args.factuals_slow
    train_images = data.train.float_images()

    t = time.perf_counter()
    surrogate = distill_surrogate(student, torch.cat([data.train.images, data.val.images]),
                                  replace(SURROGATE_CPU, epochs=args.surrogate_epochs), eps=size / 64, seed=args.seed)
    result: dict = {
        "student": args.student,
        "device": str(ae.device),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "batch_size_by_method": {},
        "steps": {},
        "factuals": {},
        "cf_per_s": {},
        "flip_rate": {},
        "nafr": {},
        "flip_rate_any": {},
        "flip_rate_by_scale": {},
        "nafr_any": {},
        "l1": {},
        "seconds": {},
        "unet_calls_per_batch": {},
        "on_slow_factuals": {},
        "surrogate": {"fidelity": surrogate.fidelity_, "eps": size / 64, "minutes": (time.perf_counter() - t) / 60},
        "baseline_condition": args.condition,
    }

    def dictionary(kind: str):
        split = data.generator.select_split("val")
        if kind == "procrustes":
            return ProcrustesDictionary(names=ATTRIBUTES).fit(ae.embed(split.images), torch.stack([split.factors[a] for a in ATTRIBUTES], 1))
        return SVDDictionary(n_components=4).fit(ae.embed(split.images))

    base = dict(condition=args.condition, internal_batch_size=args.batch_size, seed=args.seed)
    baseline_settings = {
        "dime": (DiME, dict(tau=args.tau, respacing=args.respacing, scales=scales), dict(tau=2)),
        "fastdime": (FastDiME, dict(tau=args.tau, respacing=args.respacing, scales=scales), dict(tau=2)),
        "ace": (ACE, dict(iterations=args.ace_iterations, steps=args.ace_steps, respacing=args.ace_respacing), dict(iterations=1)),
    }
    probe = None
    for method in methods:
        n = n_slow if method == "dime" else len(x)
        if method.startswith("didae"):
            explainer = DiDAE(student, ae, dictionary(method.split("_")[1]), probe=probe, internal_batch_size=args.batch_size,
                              class_names=["dark", "bright"])
            if probe is None:
                explainer.fit(train_images)
                probe = explainer.probe
            explainer.explain(x[:2])  # warm-up
            result["steps"][method] = {"ddim_steps": ae.steps, "inversion_refine": ae.inversion_refine, "atoms": len(explainer.atoms)}
        else:
            cls, settings, cheap = baseline_settings[method]
            cls(student, ae, **{**base, **settings, **cheap}).explain(x[:2])  # warm-up on the same code path
            explainer = cls(student, ae, **base, **settings)
            result["steps"][method] = settings
        t = time.perf_counter()
        exp = explainer.explain(x[:n])
        result["seconds"][method] = time.perf_counter() - t
        s = explanation_scores(exp, surrogate)
        result["cf_per_s"][method] = exp.timings["cf_per_s"]
        result["factuals"][method] = n
        result["batch_size_by_method"][method] = min(args.batch_size, n)
        for key in ("flip_rate", "nafr", "flip_rate_any", "nafr_any", "l1"):
            result[key][method] = s[key]
        if hasattr(explainer, "flip_rate_by_scale"):
            result["flip_rate_by_scale"][method] = explainer.flip_rate_by_scale()
        if "unet_calls" in exp.timings:
            result["unet_calls_per_batch"][method] = exp.timings["unet_calls"] / -(-n // args.batch_size)
        result["on_slow_factuals"][method] = explanation_scores(exp, surrogate, n_slow)
        print(f"{method}: {exp.timings['cf_per_s']:.4g} cf/s, flip rate {s['flip_rate']:.3f}, NAFR {s['nafr']:.3f}"
              f" on {n} factuals ({result['seconds'][method]:.1f} s)", flush=True)

    for name, reference in (("ratio_didae_over", "didae_procrustes"), ("ratio_didae_svd_over", "didae_svd")):
        if reference in result["cf_per_s"]:
            result[name] = {b: result["cf_per_s"][reference] / result["cf_per_s"][b] for b in BASELINES if b in result["cf_per_s"]}
    result["notes"] = (
        f"DiME runs on the first {n_slow} factuals only (quadratic cost: tau (tau + 1) / 2 UNet calls per classifier "
        "scale); the others on all factuals. DiDAE counts K counterfactuals per factual (one per atom). The UNet was "
        f"trained with T = {ae.unet.config.num_train_timesteps} steps: {args.respacing} respaced steps are every "
        f"{ae.unet.config.num_train_timesteps // args.respacing}th training step (DiME/FastDiME tau = {args.tau}), "
        f"ACE uses {args.ace_steps} of {args.ace_respacing} respaced steps."
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
