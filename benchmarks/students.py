"""Train the Square models at 32x32 on CPU and show the shortcut the project exists to fix.

Trains the Square "foundation model" (ResNet-18 predicting all 8 factors) on the balanced generator
set, the two poisoned students (a linear probe on the FM's embedding, an end-to-end ResNet-18) and
the teacher (ResNet-18 on balanced data), then scores everything on the balanced test set.

    python benchmarks/students.py --json OUT.json [--size 32] [--seed 0] [--out runs/students]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from didae_xai.data.square import CLASS_FACTORS, CONTINUOUS_FACTORS, square_benchmark
from didae_xai.metrics import group_report
from didae_xai.models import TimmClassifier, save_classifier
from didae_xai.models.training import (
    FOUNDATION_CPU,
    PROBE_STUDENT,
    RESNET_STUDENT,
    TEACHER_CPU,
    train_attribute_model,
    train_classifier,
    train_probe,
)


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 1.0 - ((pred - target) ** 2).sum().item() / ((target - target.mean()) ** 2).sum().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this file as well as stdout")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-generator", type=int, default=16000)
    parser.add_argument("--fm-epochs", type=int, default=FOUNDATION_CPU.epochs)
    parser.add_argument("--resnet-epochs", type=int, default=RESNET_STUDENT.epochs)
    parser.add_argument("--out", help="save the trained models (safetensors) into this folder")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = square_benchmark(size=args.size, seed=args.seed, n_generator=args.n_generator)
    gen_train, gen_val, gen_test = (data.generator.select_split(s) for s in ("train", "val", "test"))
    minutes, result = {}, {}

    t = time.perf_counter()
    fm, _ = train_attribute_model(
        gen_train, list(CLASS_FACTORS), list(CONTINUOUS_FACTORS),
        replace(FOUNDATION_CPU, epochs=args.fm_epochs, seed=args.seed), val=gen_val,
    )
    minutes["fm"] = (time.perf_counter() - t) / 60
    out = fm.predict_logits(gen_test.float_images())
    result["fm"] = {
        "accuracy": {f: ((out[:, i] > 0).float() == gen_test.factors[f]).float().mean().item()
                     for i, f in enumerate(CLASS_FACTORS)},
        "r2": {f: r2(out[:, len(CLASS_FACTORS) + i], gen_test.factors[f]) for i, f in enumerate(CONTINUOUS_FACTORS)},
    }
    backbone = fm.as_backbone()

    t = time.perf_counter()
    probe, _ = train_probe(backbone, data.train, replace(PROBE_STUDENT, seed=args.seed), val=data.val)
    minutes["probe"] = (time.perf_counter() - t) / 60

    t = time.perf_counter()
    resnet = TimmClassifier("resnet18", num_classes=2, image_size=args.size)
    train_classifier(resnet, data.train, replace(RESNET_STUDENT, epochs=args.resnet_epochs, seed=args.seed),
                     val=data.val, desc="resnet student")
    minutes["resnet"] = (time.perf_counter() - t) / 60

    t = time.perf_counter()
    teacher = TimmClassifier("resnet18", num_classes=2, image_size=args.size)
    train_classifier(teacher, gen_train, replace(TEACHER_CPU, seed=args.seed), val=gen_val, desc="teacher")
    minutes["teacher"] = (time.perf_counter() - t) / 60

    test_images = data.test.float_images()
    result["students"] = {}
    for name, model in (("probe", probe), ("resnet", resnet)):
        result["students"][name] = group_report(model.predict(test_images), data.test.y, data.test.a)
    teacher_report = group_report(teacher.predict(test_images), data.test.y, data.test.a)
    result["teacher"] = teacher_report
    result["minutes"] = minutes
    result["config"] = {"size": args.size, "seed": args.seed, "n_generator": args.n_generator,
                        "fm_epochs": args.fm_epochs, "resnet_epochs": args.resnet_epochs, "threads": args.threads,
                        "torch": torch.__version__}
    if args.out:
        for name, model in (("fm", fm), ("probe", probe), ("resnet", resnet), ("teacher", teacher)):
            save_classifier(model, f"{args.out}/{name}")

    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
