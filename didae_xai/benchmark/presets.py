"""Sizes of a ``didae-xai compare`` run: ``smoke``, ``quick`` (the default) and ``paper``.

A preset fixes how much of everything is trained and explained; the methods themselves keep their
published defaults (DiME/FastDiME tau = 60 of 200 steps, ACE's PGD, CFKD's 50/50 mixing, ...), except
where a preset says otherwise: ``smoke`` shrinks every loop to a few steps for speed (its numbers only
show that the pipeline runs), and ``quick`` continues DiME/FastDiME's classifier scales past the
published 15 (``guidance_scales``), which do not reach the boundary of its Square student.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from didae_xai.baselines.dime import EXTENDED_SCALES, PUBLISHED_SCALES


@dataclass(frozen=True)
class ComparePreset:
    """How big a comparison run is.

    Attributes:
        image_size: image side (Square renders at any size; files are resized).
        n_generator: images in the balanced generator set (foundation model, autoencoder, teacher).
        fm_epochs, teacher_epochs, probe_epochs, resnet_epochs: training epochs of the Square
            foundation model, the teacher (balanced data), the FM-probe student and the ResNet-18
            student (poisoned data).
        autoencoder: the autoencoder preset (:data:`didae_xai.autoencoder.PRESETS`).
        autoencoder_minutes: wall-clock budget of autoencoder training (``None``: the preset's steps).
        autoencoder_steps: cap on autoencoder optimizer steps (``None``: the preset's).
        ddim_steps: DDIM steps of DiDAE's encode/decode.
        surrogate_epochs: epochs of the adversarially distilled NAFR surrogate.
        factuals: balanced test factuals explained by DiDAE per student.
        factuals_slow: of these, how many FastDiME and ACE explain (the slow gradient methods).
        factuals_dime: how many DiME explains (quadratic in tau: the slowest).
        cfkd_factuals: training factuals CFKD explains (K counterfactuals each).
        correct_epochs: fine-tuning epochs of correctors that retrain an end-to-end student.
        tau, respacing: DiME/FastDiME noise level and respaced steps.
        guidance_scales: DiME/FastDiME classifier scales, tried in turn until the prediction flips
            (the published 8, 10, 15; ``quick`` continues them to 50, because on Square 32x32 the published
            ones let FastDiME flip the poisoned ResNet on fewer than half of the factuals, DiME on 1 of
            4 in ``quick``; the report gives the flip rate at every scale, the published-scales figure too).
        ace_iterations, ace_steps, ace_respacing: ACE's PGD iterations and its diffusion steps.
        max_shift: DiDAE moves at most this many standard deviations of the data along an atom
            (``None``: the paper's unbounded reflection). With a CPU-sized autoencoder, an unbounded
            move along an atom the classifier barely reads decodes to noise that still "flips" it;
            the bound keeps counterfactuals on the data (a boundary out of reach is reported as no flip).
        needs_gpu: refuse to run on CPU unless asked (``--allow-cpu``).
    """

    name: str
    description: str
    image_size: int = 32
    n_generator: int = 16000
    fm_epochs: int = 8
    teacher_epochs: int = 6
    probe_epochs: int = 300
    resnet_epochs: int = 60
    autoencoder: str = "square32_cpu"
    autoencoder_minutes: float | None = 10.0
    autoencoder_steps: int | None = None
    ddim_steps: int = 20
    surrogate_epochs: int = 4
    factuals: int = 64
    factuals_slow: int = 16
    factuals_dime: int = 4
    cfkd_factuals: int = 256
    correct_epochs: int = 5
    tau: int = 60
    respacing: int = 200
    guidance_scales: tuple[float, ...] = PUBLISHED_SCALES
    ace_iterations: int = 200
    ace_steps: int = 5
    ace_respacing: int = 50
    max_shift: float | None = 3.0
    needs_gpu: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "ComparePreset":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"Unknown preset fields {unknown}; known: {', '.join(sorted(known))}.")
        merged = {**asdict(self), **changes}
        merged["guidance_scales"] = tuple(float(s) for s in merged["guidance_scales"])
        return ComparePreset(**merged)


_SMOKE = ComparePreset(
    name="smoke",
    description="a minute or two on CPU: every stage with a few steps; checks the pipeline, not the method",
    n_generator=800,
    fm_epochs=1,
    teacher_epochs=1,
    probe_epochs=20,
    resnet_epochs=2,
    autoencoder_minutes=None,
    autoencoder_steps=20,
    ddim_steps=4,
    surrogate_epochs=1,
    factuals=8,
    factuals_slow=4,
    factuals_dime=2,
    cfkd_factuals=16,
    correct_epochs=1,
    tau=4,
    respacing=20,
    ace_iterations=4,
    ace_steps=2,
    ace_respacing=10,
)

PRESETS: dict[str, ComparePreset] = {
    "smoke": _SMOKE,
    # The smoke sizes with more data, more epochs and 600 autoencoder steps: enough for a shortcut.
    "tiny": _SMOKE.replace(
        name="tiny",
        description="a couple of minutes on CPU: small models that already show the shortcut and its "
        "counterfactuals (the documentation examples share them)",
        n_generator=8000, fm_epochs=5, probe_epochs=10, autoencoder_steps=600, ddim_steps=10,
    ),
    "quick": ComparePreset(
        name="quick",
        description="Square 32x32 on 2 CPU cores in under 20 minutes: every explainer and corrector, "
        "CPU-sized training, the gradient baselines on fewer factuals",
        n_generator=12000,
        fm_epochs=6,
        teacher_epochs=5,
        resnet_epochs=40,
        autoencoder_minutes=6.0,
        factuals=64,
        factuals_slow=16,
        factuals_dime=4,
        cfkd_factuals=128,
        correct_epochs=3,
        guidance_scales=EXTENDED_SCALES,
    ),
    "paper": ComparePreset(
        name="paper",
        description="the reference sizes (SPEC §2, §8): Square 64x64, the reference UNet, 16k generator "
        "images; meant for a GPU",
        image_size=64,
        n_generator=16000,
        fm_epochs=30,
        teacher_epochs=30,
        resnet_epochs=300,
        autoencoder="square64_paper",
        autoencoder_minutes=None,
        ddim_steps=20,
        surrogate_epochs=20,
        factuals=200,
        factuals_slow=200,
        factuals_dime=200,
        cfkd_factuals=1000,
        correct_epochs=20,
        max_shift=None,
        needs_gpu=True,
    ),
}


def get_preset(name: str) -> ComparePreset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]
