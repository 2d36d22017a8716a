"""Train the CPU diffusion autoencoder on 32x32 Square and measure reconstruction, edits and speed.

The autoencoder is conditioned on the Square foundation model (a ResNet-18 predicting all 8 factors;
``--fm PATH`` reuses one saved with ``save_classifier``, otherwise one is trained first). Measured on
held-out generator images:

- ``psnr_inversion_db``: encode (DDIM inversion) -> decode, PSNR on the [0, 1] scale;
- ``psnr_fixed_noise_db``: decode the true z from fixed noise (z alone must carry the image; the
  Square pixel noise, sigma = 20/255, caps this near 19 dB);
- edits: decode each image's inverted x_T with a *donor* image's z and read the red intensity inside
  the square found in the decoded image (the inner square is where green and blue are 0 inside the
  grey frame) and the background intensity (outside the frames); Pearson r and the least-squares
  slope against the donor's true ColorA / ColorB (slope 1: the edit transfers fully, 0: the decode
  ignores z). ``edit_swap`` also holds the red read inside the donor's ground-truth mask
  (``..._donor_mask``, which also charges position errors) and the position error of the decoded
  square. The same read-out from fixed noise (``..._fixed_noise``) shows how much the inverted noise
  damps the edit, and ``edit_same_position`` uses donors re-rendered at the recipient's position
  (only the colours change, as in an attribute edit);
- decode throughput at 10 and 20 steps for one warm batch.

    python benchmarks/autoencoder.py --json OUT.json [--fm runs/fm] [--train-minutes 10] [--out runs/ae]
    python benchmarks/autoencoder.py --json tiny.json --train-minutes 0.5 --n-train 512 --fm-epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F

from didae_xai.autoencoder import DiffusionAutoencoder, get_preset, train_autoencoder
from didae_xai.data.square import CLASS_FACTORS, CONTINUOUS_FACTORS, SquareGeometry, render, square_benchmark
from didae_xai.io import load_json, save_json
from didae_xai.models import load_classifier, save_classifier
from didae_xai.models.training import FOUNDATION_CPU, train_attribute_model


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on the [0, 1] scale."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1 / mse)


def fit_line(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Pearson r and least-squares slope/intercept of y on x."""
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(), y - y.mean()
    slope = (xc * yc).sum() / (xc * xc).sum()
    r = (xc * yc).sum() / ((xc * xc).sum() * (yc * yc).sum()).sqrt()
    return {"r": float(r), "slope": float(slope), "intercept": float(y.mean() - slope * x.mean())}


def frames(inner: torch.Tensor, size: int) -> torch.Tensor:
    """The grey frame + red square region around each inner-square mask (N, S, S) bool."""
    border = SquareGeometry.for_size(size).border
    return F.max_pool2d(inner.float().unsqueeze(1), 2 * border + 1, stride=1, padding=border).squeeze(1) > 0


def read_attributes(images: torch.Tensor, fg_mask: torch.Tensor, bg_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean red intensity inside ``fg_mask`` and mean intensity (all channels) inside ``bg_mask``."""
    fg = (images[:, 0] * fg_mask).flatten(1).sum(1) / fg_mask.flatten(1).sum(1)
    bg = (images * bg_mask.unsqueeze(1)).flatten(1).sum(1) / (3 * bg_mask.flatten(1).sum(1))
    return fg, bg


def locate_squares(images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the square in each image: ``(inner masks (N, S, S) bool, top-left of the frame (N, 2))``.

    The inner square is the only place where green and blue are 0 inside a grey (127) frame, so the
    frame position maximising (mean G+B on the frame ring) - (mean G+B inside) finds it whatever the
    red and background intensities are.
    """
    geo = SquareGeometry.for_size(size)
    inner_side = geo.frame - 2 * geo.border
    gb = images[:, 1:3].mean(1, keepdim=True)
    frame_sum = F.avg_pool2d(gb, geo.frame, stride=1) * geo.frame**2
    inner_sum = F.avg_pool2d(gb, inner_side, stride=1) * inner_side**2
    inner_sum = inner_sum[:, :, geo.border : geo.border + frame_sum.shape[2], geo.border : geo.border + frame_sum.shape[3]]
    ring = (frame_sum - inner_sum) / (geo.frame**2 - inner_side**2)
    score = (ring - inner_sum / inner_side**2).flatten(1)
    best = score.argmax(1)
    width = frame_sum.shape[3]
    rows, cols = best // width, best % width
    r = torch.arange(size).view(1, size, 1)
    c = torch.arange(size).view(1, 1, size)
    r0, c0 = (rows + geo.border).view(-1, 1, 1), (cols + geo.border).view(-1, 1, 1)
    mask = (r >= r0) & (r < r0 + inner_side) & (c >= c0) & (c < c0 + inner_side)
    return mask, torch.stack([rows, cols], 1)


def true_frame_position(dataset, index: torch.Tensor, size: int) -> torch.Tensor:
    """Top-left (row, column) of the frame: ``PositionX`` is the row offset, ``PositionY`` the column."""
    return torch.stack([(dataset.factors["PositionX"][index] * size).round(), (dataset.factors["PositionY"][index] * size).round()], 1).long()


def edit_scores(
    decoded: torch.Tensor,
    donor_mask: torch.Tensor,
    exclude: torch.Tensor,
    true_fg: torch.Tensor,
    true_bg: torch.Tensor,
    true_pos: torch.Tensor,
    size: int,
) -> dict[str, float]:
    """How well decoded images carry the donor's attributes.

    Foreground: mean red inside the square *found in the decoded image* (:func:`locate_squares`),
    against the donor's ColorA; ``..._donor_mask``: the same inside the donor's ground-truth mask,
    which also charges any error in the decoded position. Background: mean intensity outside
    ``exclude`` (the known frames) and outside the found frame, against the donor's ColorB.
    Position: distance in pixels between the found frame and the donor's.
    """
    located, pos = locate_squares(decoded, size)
    frame_found = frames(located, size)
    fg_found, bg = read_attributes(decoded, located, ~(exclude | frame_found))
    fg_donor, _ = read_attributes(decoded, donor_mask, ~exclude)
    f, fd, b = fit_line(true_fg, fg_found), fit_line(true_fg, fg_donor), fit_line(true_bg, bg)
    dist = (pos - true_pos).abs().max(1).values.float()
    return {
        "r_foreground": f["r"], "slope_foreground": f["slope"],
        "r_background": b["r"], "slope_background": b["slope"],
        "r_foreground_donor_mask": fd["r"], "slope_foreground_donor_mask": fd["slope"],
        "mae_foreground": float((fg_found - true_fg).abs().mean()),
        "mae_background": float((bg - true_bg).abs().mean()),
        "position_error_px_median": float(dist.median()),
        "position_exact_share": float((dist == 0).float().mean()),
    }


def derangement(n: int, seed: int) -> torch.Tensor:
    """A random permutation without fixed points (each image gets another image as donor)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fixed = perm == torch.arange(n)
    perm[fixed] = perm.roll(1)[fixed]
    fixed = perm == torch.arange(n)
    return torch.where(fixed, (perm + 1) % n, perm)


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 1.0 - float(((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def probe_r2(z_train, y_train, z_test, y_test, ridge: float = 1e-2) -> float:
    """R^2 on held-out data of a ridge probe z -> y (is the factor linearly in the embedding?)."""
    mu, sd = z_train.mean(0), z_train.std(0).clamp_min(1e-6)
    a = torch.cat([(z_train - mu) / sd, torch.ones(len(z_train), 1)], 1).double()
    w = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y_train.double())
    pred = torch.cat([(z_test - mu) / sd, torch.ones(len(z_test), 1)], 1).double() @ w
    return r2(pred, y_test.double())


def timed_decode(ae: DiffusionAutoencoder, z: torch.Tensor, x_T: torch.Tensor, steps: int) -> float:
    """Images per second of one warm decode of the batch."""
    ae.decode(z, x_T, steps=steps)  # warm-up (first-call allocations)
    start = time.perf_counter()
    ae.decode(z, x_T, steps=steps)
    return len(z) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this file as well as stdout")
    parser.add_argument("--fm", help="folder of a saved Square foundation model (save_classifier); trained if absent")
    parser.add_argument("--preset", default="square32_cpu")
    parser.add_argument("--train-minutes", type=float, default=None, help="training budget (default: the preset's)")
    parser.add_argument("--train-steps", type=int, default=None, help="step cap (default: the preset's)")
    parser.add_argument("--n-train", type=int, default=None, help="autoencoder training images (default: all)")
    parser.add_argument("--n-generator", type=int, default=16000, help="balanced generator set (FM + autoencoder)")
    parser.add_argument("--fm-epochs", type=int, default=FOUNDATION_CPU.epochs)
    parser.add_argument("--n-test", type=int, default=128, help="held-out images (= edit pairs)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's, 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="decode batch size (also for throughput)")
    parser.add_argument("--conditioning", choices=["time", "adagn"], default=None)
    parser.add_argument("--prediction-type", choices=["v_prediction", "epsilon"], default=None)
    parser.add_argument("--coords", type=int, choices=[0, 1], default=None, help="coordinate channels on/off")
    parser.add_argument("--spatial", type=int, default=None, help="spatial z-map channels (0: off)")
    parser.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR weighting (default: the preset's; <= 0: off)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--refine", type=int, default=None, help="fixed-point iterations per inversion step")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 training and inference")
    parser.add_argument("--checkpoint", help="training checkpoint file (resumed from if present)")
    parser.add_argument("--autoencoder", help="evaluate a saved autoencoder folder (save_pretrained) instead of training")
    parser.add_argument("--out", help="save the FM and the autoencoder into this folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    preset = get_preset(args.preset)
    size = preset.image_size
    steps = args.steps or preset.steps
    bf16 = not args.no_bf16
    out = Path(args.out) if args.out else None
    result: dict = {}
    timing: dict = {}

    # ------------------------------------------------------------ data and foundation model
    data = square_benchmark(size=size, seed=args.seed, n_generator=args.n_generator)
    gen_train, gen_val, gen_test = (data.generator.select_split(s) for s in ("train", "val", "test"))
    t = time.perf_counter()
    if args.fm:
        fm = load_classifier(args.fm)
        fm_source = str(args.fm)
    else:
        fm, _ = train_attribute_model(
            gen_train, list(CLASS_FACTORS), list(CONTINUOUS_FACTORS),
            replace(FOUNDATION_CPU, epochs=args.fm_epochs, seed=args.seed), val=gen_val, desc="foundation model",
        )
        fm_source = f"trained here: {args.fm_epochs} epochs on {len(gen_train)} images"
        if out is not None:
            save_classifier(fm, out / "fm")
    timing["fm_minutes"] = (time.perf_counter() - t) / 60
    fm.eval()
    backbone = fm.as_backbone()

    train = gen_train if args.n_train is None else gen_train.subset(torch.arange(min(args.n_train, len(gen_train))))
    test = gen_test.subset(torch.arange(min(args.n_test, len(gen_test))))
    t = time.perf_counter()
    z_train = backbone.embed(train.float_images(), 256)
    z_test = backbone.embed(test.float_images(), 256)
    timing["embed_seconds"] = time.perf_counter() - t
    result["fm_probe_r2"] = {
        f: probe_r2(z_train, train.factors[f], z_test, test.factors[f]) for f in ("ColorA", "ColorB", "PositionX", "PositionY")
    }

    # ------------------------------------------------------------ train the autoencoder
    if args.autoencoder:
        ae = DiffusionAutoencoder.from_pretrained(args.autoencoder, backbone, batch_size=args.batch_size, bf16=bf16)
        if args.steps:
            ae.steps = args.steps
        history_file = Path(args.autoencoder) / "train_history.json"
        history = load_json(history_file) if history_file.is_file() else {"elapsed_s": math.nan, "step": 0, "loss": []}
        cfg = replace(preset.train, **history.get("config", {}))
        ema_unet = ae.unet
    else:
        overrides = {k: v for k, v in (("conditioning", args.conditioning), ("prediction_type", args.prediction_type)) if v}
        if args.spatial is not None:
            overrides["spatial_channels"] = args.spatial
        if args.coords is not None:
            overrides["coordinate_channels"] = bool(args.coords)
        torch.manual_seed(args.seed)
        unet = preset.build_unet(backbone.embedding_dim, **overrides)
        cfg = replace(preset.train, seed=args.seed, bf16=bf16)
        if args.train_minutes is not None:
            cfg = replace(cfg, max_minutes=args.train_minutes)
        if args.snr_gamma is not None:
            cfg = replace(cfg, snr_gamma=args.snr_gamma if args.snr_gamma > 0 else None)
        if args.lr is not None:
            cfg = replace(cfg, lr=args.lr)
        if args.train_steps is not None:
            cfg = replace(cfg, steps=args.train_steps)
        checkpoint = args.checkpoint or (out / "autoencoder_checkpoint.pt" if out is not None else None)
        ema_unet, history = train_autoencoder(unet, train.images, z_train, cfg, checkpoint=checkpoint)
        ae = DiffusionAutoencoder(backbone, ema_unet, steps=steps, batch_size=args.batch_size, bf16=bf16)
    if args.refine is not None:
        ae.inversion_refine = args.refine
    steps = ae.steps
    if out is not None and not args.autoencoder:
        ae.save_pretrained(out / "autoencoder")
        save_json({k: v for k, v in history.items() if k != "loss"}, out / "autoencoder" / "train_history.json")

    # ------------------------------------------------------------ reconstruction
    t = time.perf_counter()
    x = test.float_images()
    t_enc = time.perf_counter()
    z, x_T = ae.encode(x, z=z_test)
    result["encode_images_per_s"] = len(x) / (time.perf_counter() - t_enc)
    rec = ae.decode(z, x_T)
    fixed_noise = ae.noise(len(x), seed=args.seed + 1)
    rec_fixed = ae.decode(z, fixed_noise)
    result["psnr_inversion_db"] = float(psnr(rec, x).mean())
    result["psnr_fixed_noise_db"] = float(psnr(rec_fixed, x).mean())
    result["x_T_std"] = float(x_T.std())

    # ------------------------------------------------------------ edits: swap z
    donor = derangement(len(test), seed=args.seed + 2)
    inner = test.masks
    frame = frames(inner, size)
    everything = torch.arange(len(test))
    true_fg, true_bg = test.factors["ColorA"][donor], test.factors["ColorB"][donor]
    swap_args = (inner[donor], frame | frame[donor], true_fg, true_bg, true_frame_position(test, donor, size), size)
    scores = edit_scores(ae.decode(z[donor], x_T), *swap_args)
    fixed = edit_scores(ae.decode(z[donor], fixed_noise), *swap_args)
    reference = edit_scores(x[donor], *swap_args)  # the read-out on the donor images themselves
    for key in ("r_foreground", "r_background", "slope_foreground", "slope_background"):
        result[f"edit_{key}"] = scores[key]
    result["edit_pairs"] = len(test)
    result["edit_swap"] = scores
    result["edit_swap_fixed_noise"] = fixed
    result["edit_swap_donor_images"] = reference
    result["edit_damping"] = {  # slope from inverted noise / slope from fixed noise (1: no damping)
        part: scores[f"slope_{part}"] / fixed[f"slope_{part}"] if fixed[f"slope_{part}"] else math.nan
        for part in ("foreground", "background")
    }

    # Attribute edits: donors re-rendered at the recipient's position, only ColorA/ColorB change.
    factors = {k: v.clone() for k, v in test.factors.items()}
    factors["ColorA"], factors["ColorB"] = true_fg, true_bg
    images_sp, _ = render(factors, size, seed=args.seed + 3)
    z_sp = backbone.embed(images_sp.float() / 255, 256)
    sp_args = (inner, frame, true_fg, true_bg, true_frame_position(test, everything, size), size)
    result["edit_same_position"] = edit_scores(ae.decode(z_sp, x_T), *sp_args)
    result["edit_same_position_fixed_noise"] = edit_scores(ae.decode(z_sp, fixed_noise), *sp_args)
    result["reconstruction_readout"] = edit_scores(
        rec, inner, frame, test.factors["ColorA"], test.factors["ColorB"], true_frame_position(test, everything, size), size
    )
    timing["eval_seconds"] = time.perf_counter() - t

    # ------------------------------------------------------------ throughput
    b = min(args.batch_size, len(z))
    result["decode_images_per_s"] = {
        f"steps_{k}": timed_decode(ae, z[:b], fixed_noise[:b], k) for k in (10, 20)
    }
    result["batch_size"] = b

    # ------------------------------------------------------------ summary
    result["train_minutes"] = history["elapsed_s"] / 60
    result["train_steps"] = history["step"]
    result["train_images_seen"] = history["step"] * cfg.batch_size
    result["final_loss"] = float(torch.tensor(history["loss"][-100:]).mean()) if history.get("loss") else math.nan
    result["params_millions"] = ema_unet.num_parameters_millions
    result["done_criteria"] = {
        "psnr_inversion_ge_28": result["psnr_inversion_db"] >= 28,
        "edit_r_ge_0.9": min(result["edit_r_foreground"], result["edit_r_background"]) >= 0.9,
        "edit_slope_ge_0.8": min(result["edit_slope_foreground"], result["edit_slope_background"]) >= 0.8,
        "pairs_ge_64": len(test) >= 64,
        # The budget is checked between steps, so the last step may end a fraction of a second past it.
        "train_minutes_le_15": result["train_minutes"] <= 15.01,
    }
    result["setup"] = {
        "preset": preset.name,
        "unet": {k: v for k, v in dict(ema_unet.config).items() if not k.startswith("_")},
        "train": asdict(cfg),
        "ddim_steps": steps,
        "inversion_refine": ae.inversion_refine,
        "bf16": bf16,
        "threads": torch.get_num_threads(),
        "n_train": len(train),
        "n_test": len(test),
        "fm": fm_source,
        "seed": args.seed,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "timing": timing,
    }
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        save_json(json.loads(text), args.json)


if __name__ == "__main__":
    main()
