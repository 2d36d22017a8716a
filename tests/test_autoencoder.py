"""The FM-conditioned diffusion autoencoder: a tiny UNet, 16x16 images, a few DDIM steps."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from didae_xai.autoencoder import (
    PRESETS,
    AutoencoderTrainConfig,
    ConditionalUNet,
    DiffusionAutoencoder,
    ddim_decode,
    ddim_invert,
    get_preset,
    predict_eps_x0,
    resume_info,
    train_autoencoder,
)

SIZE, DIM, STEPS = 16, 12, 3


class TinyBackbone(nn.Module):
    """A frozen stand-in for the backbone protocol: ``embedding_dim``, ``forward``, ``embed``."""

    def __init__(self, embedding_dim: int = DIM, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embedding_dim = embedding_dim
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, embedding_dim, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.requires_grad_(False).eval()

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.net(x01)

    @torch.no_grad()
    def embed(self, x01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return torch.cat([self(x01[i : i + batch_size]) for i in range(0, len(x01), batch_size)])


def tiny_unet(seed: int = 0, **kw) -> ConditionalUNet:
    torch.manual_seed(seed)
    args = dict(embedding_dim=DIM, sample_size=SIZE, block_out_channels=(8, 16), norm_num_groups=4)
    return ConditionalUNet(**{**args, **kw})


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 1, 1, generator=gen).expand(n, 3, SIZE, SIZE).clone()
    x[:, 0, 4:9, 5:10] = torch.rand(n, 1, 1, generator=gen)
    return (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


@pytest.fixture(scope="module")
def backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture(scope="module")
def trained(backbone) -> tuple[ConditionalUNet, dict]:
    """A tiny UNet after a few steps (non-trivial weights, z statistics set, EMA copy)."""
    x = images(16, seed=2)
    cfg = AutoencoderTrainConfig(steps=8, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9, bf16=False)
    ema, history = train_autoencoder(tiny_unet(), x, backbone.embed(x), cfg, progress=False)
    return ema, history


@pytest.fixture()
def ae(backbone, trained) -> DiffusionAutoencoder:
    return DiffusionAutoencoder(backbone, trained[0], steps=STEPS, batch_size=4)


# ---------------------------------------------------------------------------- UNet
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("conditioning", ["time", "adagn"])
def test_unet_forward_shapes_conditional_and_unconditional(prediction_type, conditioning):
    unet = tiny_unet(prediction_type=prediction_type, conditioning=conditioning)
    x, z = torch.randn(3, 3, SIZE, SIZE), torch.randn(3, DIM)
    cond = unet(x, torch.tensor([1, 500, 999]), z)
    uncond = unet(x, 500, None)
    assert cond.shape == uncond.shape == x.shape
    assert torch.isfinite(cond).all() and torch.isfinite(uncond).all()
    # The null embedding stands in for z: masking every row equals the unconditional call.
    masked = unet(x, 500, z, uncond_mask=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(masked, uncond)
    assert not torch.allclose(unet(x, 500, z), uncond)


def test_adagn_starts_as_identity_and_adds_parameters():
    plain, adagn = tiny_unet(conditioning="time"), tiny_unet(conditioning="adagn")
    assert sum(p.numel() for p in adagn.parameters()) > sum(p.numel() for p in plain.parameters())
    x, z = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, DIM)
    # Zero-initialised z-scales: at initialisation both routes compute the same function.
    adagn.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(adagn(x, 10, z), plain(x, 10, z))


def test_coordinate_channels_and_spatial_map_condition_on_position(tmp_path):
    unet = tiny_unet(coordinate_channels=True, spatial_channels=3)
    assert unet.unet.config.in_channels == 3 + 2 + 3 and unet.spatial_resolution == SIZE // 4
    x, z = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, DIM)
    out = unet(x, 100, z)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # The spatial map is a function of z: zeroing its weights changes the output of a z-conditioned call.
    with torch.no_grad():
        unet.z_spatial.weight.mul_(0)
    assert not torch.allclose(unet(x, 100, z), out)
    unet.save_pretrained(tmp_path / "u")
    loaded = ConditionalUNet.from_pretrained(tmp_path / "u")
    assert torch.equal(loaded(x, 100, z), unet(x, 100, z))


def test_wrong_embedding_size_is_a_clear_error(backbone, trained):
    unet = trained[0]
    with pytest.raises(ValueError, match=rf"embedding_dim={DIM}.*size 7"):
        unet(torch.randn(2, 3, SIZE, SIZE), 10, torch.randn(2, 7))
    with pytest.raises(ValueError, match="embedding_dim"):
        DiffusionAutoencoder(TinyBackbone(embedding_dim=7), unet)
    ae = DiffusionAutoencoder(backbone, unet, steps=STEPS)
    with pytest.raises(ValueError, match=rf"\(B, {DIM}\)"):
        ae.decode(torch.randn(2, DIM + 1), ae.noise(2))
    with pytest.raises(ValueError, match="one per image"):
        ae.decode(torch.randn(3, DIM), ae.noise(2))


def test_wrong_image_size_channels_and_range_are_clear_errors(ae):
    with pytest.raises(ValueError, match=rf"\(B, 3, {SIZE}, {SIZE}\).*\(2, 3, 32, 32\)"):
        ae.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"3-channel"):
        ae.encode(torch.rand(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ae.encode(2 * torch.rand(2, 3, SIZE, SIZE) - 1)
    with pytest.raises(ValueError, match="32x32|16x16"):
        ae.decode(torch.randn(2, DIM), torch.randn(2, 3, 32, 32))


# ---------------------------------------------------------------------------- autoencoder
def test_encode_decode_shapes_and_ranges(ae, backbone):
    x = images(5)
    z, x_T = ae.encode(x)
    assert z.shape == (5, DIM) and x_T.shape == x.shape
    torch.testing.assert_close(z, backbone.embed(x))
    assert torch.isfinite(x_T).all()
    out = ae.decode(z, x_T)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # uint8 images are accepted and mean the same thing as [0, 1] floats.
    x8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(ae.encode(x8)[1], ae.encode(x8.float() / 255)[1])
    rec = ae.reconstruct(x)
    assert rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1


def test_encode_and_decode_are_deterministic(ae):
    x = images(5)
    z1, xt1 = ae.encode(x)
    z2, xt2 = ae.encode(x)
    assert torch.equal(z1, z2) and torch.equal(xt1, xt2)
    assert torch.equal(ae.decode(z1, xt1), ae.decode(z2, xt2))
    assert torch.equal(ae.sample(z1, seed=3), ae.sample(z1, seed=3))
    assert not torch.equal(ae.sample(z1, seed=3), ae.sample(z1, seed=4))


def test_batch_independence(ae):
    x = images(6)
    z, x_T = ae.encode(x)
    out = ae.decode(z, x_T)  # batches of 4 and 2
    for i in (0, 3, 5):
        zi, xti = ae.encode(x[i : i + 1])
        torch.testing.assert_close(xti[0], x_T[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(ae.decode(z[i : i + 1], x_T[i : i + 1])[0], out[i], atol=1e-5, rtol=0)
    # Permuting the batch permutes the outputs.
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    torch.testing.assert_close(ae.decode(z[order], x_T[order]), out[order], atol=1e-5, rtol=0)


def test_unconditional_decode_runs_and_differs(ae):
    x_T = ae.noise(3, seed=0)
    uncond = ae.decode(None, x_T)
    assert uncond.shape == (3, 3, SIZE, SIZE) and 0 <= uncond.min() and uncond.max() <= 1
    assert torch.equal(uncond, ae.sample(None, n=3, seed=0))
    assert not torch.allclose(uncond, ae.decode(ae.embed(images(3)), x_T))


def test_decode_and_encode_are_the_ddim_functions_on_the_unit_scale(ae):
    x = images(2)
    z, x_T = ae.encode(x)
    unet = ae.unet
    torch.testing.assert_close(ddim_invert(unet, 2 * x - 1, z, STEPS, refine=ae.inversion_refine), x_T)
    torch.testing.assert_close(((ddim_decode(unet, x_T, z, STEPS) + 1) / 2).clamp(0, 1), ae.decode(z, x_T))
    # The (eps, x0) estimates recombine to x_t at their own noise level, whatever the prediction type.
    eps, x0 = predict_eps_x0(unet, x_T, 600, z)
    alphas = unet.make_scheduler().alphas_cumprod
    torch.testing.assert_close(alphas[600].sqrt() * x0 + (1 - alphas[600]).sqrt() * eps, x_T, atol=1e-5, rtol=0)


def test_refined_inversion_is_exact_for_the_decoder(ae):
    """Fixed-point refinement solves each inversion step for the decoder: the round trip error drops."""
    x = images(4)
    z = ae.embed(x)
    unet = ae.unet

    def round_trip_error(refine: int, steps: int = 10) -> float:
        x_T = ddim_invert(unet, 2 * x - 1, z, steps, refine=refine)
        return (ddim_decode(unet, x_T, z, steps) - (2 * x - 1)).abs().max().item()

    errors = [round_trip_error(r) for r in (0, 1, 2, 4, 8)]
    assert all(b < a for a, b in zip(errors, errors[1:]))  # each iteration gets closer
    assert errors[-1] < 0.02 * errors[0]
    with pytest.raises(ValueError, match="refine"):
        ddim_invert(unet, 2 * x - 1, z, STEPS, refine=-1)


def test_steps_validation(ae):
    with pytest.raises(ValueError, match="steps"):
        ae.decode(torch.randn(1, DIM), ae.noise(1), steps=0)


# ---------------------------------------------------------------------------- save / load
def test_unet_save_load_round_trip_gives_identical_outputs(trained, tmp_path):
    unet = trained[0]
    assert not torch.equal(unet.z_std, torch.ones(DIM))  # statistics were fitted and must travel
    unet.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ConditionalUNet.from_pretrained(tmp_path / "unet")
    private = lambda cfg: {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if not k.startswith("_")}
    assert private(loaded.config) == private(unet.config)
    x, z = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, DIM)
    assert torch.equal(loaded(x, 300, z), unet(x, 300, z))
    assert torch.equal(loaded(x, 300, None), unet(x, 300, None))


def test_autoencoder_save_load_round_trip(ae, backbone, tmp_path):
    ae.save_pretrained(tmp_path / "ae")
    loaded = DiffusionAutoencoder.from_pretrained(tmp_path / "ae", backbone)
    assert (loaded.steps, loaded.batch_size, loaded.bf16) == (ae.steps, ae.batch_size, ae.bf16)
    assert loaded.inversion_refine == ae.inversion_refine
    x = images(3)
    z, x_T = ae.encode(x)
    z2, x_T2 = loaded.encode(x)
    assert torch.equal(x_T, x_T2) and torch.equal(ae.decode(z, x_T), loaded.decode(z2, x_T2))
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        DiffusionAutoencoder.from_pretrained(tmp_path / "missing", backbone)


# ---------------------------------------------------------------------------- training
def _train_data(backbone):
    x = (images(12, seed=5) * 255).round().to(torch.uint8)
    return x, backbone.embed(x.float() / 255)


CFG = AutoencoderTrainConfig(steps=6, batch_size=5, lr=2e-3, warmup_steps=2, ema_decay=0.9, checkpoint_every=2,
                             bf16=False, cond_dropout=0.3, seed=7)


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_history_ema_and_checkpoint(backbone, tmp_path):
    x, z = _train_data(backbone)
    unet = tiny_unet()
    ema, history = train_autoencoder(unet, x, z, CFG, checkpoint=tmp_path / "ckpt.pt", progress=False)
    assert history["step"] == 6 and len(history["loss"]) == 6 and history["stopped"] == "steps"
    assert all(torch.isfinite(torch.tensor(history["loss"])))
    assert not _states_equal(ema, unet)  # EMA weights differ from the raw ones
    torch.testing.assert_close(unet.z_mean, z.mean(0))  # z statistics fitted on the training embeddings
    assert resume_info(tmp_path / "ckpt.pt")["step"] == 6
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files


def test_resume_after_interruption_continues_from_the_saved_step_and_matches(backbone, tmp_path):
    x, z = _train_data(backbone)
    full_unet = tiny_unet()
    full_ema, full_hist = train_autoencoder(full_unet, x, z, CFG, progress=False)

    ckpt = tmp_path / "ckpt.pt"

    def crash(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(tiny_unet(), x, z, CFG, checkpoint=ckpt, callback=crash, progress=False)
    assert resume_info(ckpt)["step"] == 4  # the last checkpoint before the crash: at most one interval lost

    unet = tiny_unet(seed=123)  # initial weights do not matter when resuming
    ema, hist = train_autoencoder(unet, x, z, CFG, checkpoint=ckpt, progress=False)
    assert hist["resumed_from"] == 4 and hist["step"] == 6
    assert hist["loss"] == full_hist["loss"]
    assert _states_equal(unet, full_unet) and _states_equal(ema, full_ema)


def test_max_steps_stops_gracefully_and_resumes(backbone, tmp_path):
    x, z = _train_data(backbone)
    full_unet = tiny_unet()
    train_autoencoder(full_unet, x, z, CFG, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    _, hist = train_autoencoder(tiny_unet(), x, z, CFG, checkpoint=ckpt, max_steps=3, progress=False)
    assert hist["stopped"] == "max_steps" and resume_info(ckpt)["step"] == 3
    unet = tiny_unet()
    _, hist = train_autoencoder(unet, x, z, CFG, checkpoint=ckpt, progress=False)
    assert hist["resumed_from"] == 3 and hist["stopped"] == "steps"
    assert _states_equal(unet, full_unet)


def test_resume_rejects_a_checkpoint_of_another_architecture(backbone, tmp_path):
    x, z = _train_data(backbone)
    ckpt = tmp_path / "ckpt.pt"
    train_autoencoder(tiny_unet(), x, z, CFG, checkpoint=ckpt, max_steps=2, progress=False)
    with pytest.raises(ValueError, match="another UNet configuration"):
        train_autoencoder(tiny_unet(block_out_channels=(8, 8)), x, z, CFG, checkpoint=ckpt, progress=False)


def test_condition_dropout_trains_the_null_embedding(backbone):
    x, z = _train_data(backbone)
    never = tiny_unet()
    train_autoencoder(never, x, z, replace(CFG, cond_dropout=0.0), progress=False)
    assert torch.equal(never.null_embedding, torch.zeros(DIM))
    always = tiny_unet()
    train_autoencoder(always, x, z, replace(CFG, cond_dropout=1.0), progress=False)
    assert always.null_embedding.abs().sum() > 0


def _fixed_loss(unet: ConditionalUNet, x: torch.Tensor, z: torch.Tensor) -> float:
    """v-prediction MSE on fixed noise and timesteps (a low-variance yardstick)."""
    gen = torch.Generator().manual_seed(0)
    x0 = (2 * x.float() / 255 - 1).repeat(4, 1, 1, 1)
    noise, t = torch.randn(x0.shape, generator=gen), torch.randint(0, 1000, (len(x0),), generator=gen)
    sched = unet.make_scheduler("ddpm")
    with torch.no_grad():
        pred = unet(sched.add_noise(x0, noise, t), t, z.repeat(4, 1))
    return torch.nn.functional.mse_loss(pred, sched.get_velocity(x0, noise, t)).item()


def test_training_reduces_the_loss(backbone):
    x, z = _train_data(backbone)
    unet = tiny_unet()
    unet.set_embedding_stats(z)
    before = _fixed_loss(unet, x, z)
    cfg = replace(CFG, steps=120, cond_dropout=0.0, lr=3e-3, warmup_steps=5)
    ema, _ = train_autoencoder(unet, x, z, cfg, progress=False)
    assert _fixed_loss(ema, x, z) < 0.5 * before


def test_snr_weights_cap_only_the_low_noise_steps():
    from didae_xai.autoencoder.train import _snr_weights

    alphas = tiny_unet().make_scheduler("ddpm").alphas_cumprod
    snr = alphas / (1 - alphas)
    assert _snr_weights(alphas, "v_prediction", None) is None
    for kind in ("v_prediction", "epsilon"):
        w = _snr_weights(alphas, kind, 5.0)
        assert torch.all(w[snr <= 5] == 1) and torch.all(w[snr > 5] < 1) and torch.all(w > 0)
        assert torch.all(w[1:] >= w[:-1])  # monotone in t: noisier steps never weigh less


def test_old_checkpoints_without_new_config_keys_resume(backbone, tmp_path):
    x, z = _train_data(backbone)
    ckpt = tmp_path / "ckpt.pt"
    train_autoencoder(tiny_unet(), x, z, CFG, checkpoint=ckpt, max_steps=2, progress=False)
    state = torch.load(ckpt, weights_only=True)
    del state["unet_config"]["spatial_channels"]  # as written before the option existed (default 0)
    torch.save(state, ckpt)
    _, hist = train_autoencoder(tiny_unet(), x, z, CFG, checkpoint=ckpt, progress=False)
    assert hist["resumed_from"] == 2


def test_training_validates_its_inputs(backbone):
    x, z = _train_data(backbone)
    with pytest.raises(ValueError, match="differ in length"):
        train_autoencoder(tiny_unet(), x, z[:-1], CFG, progress=False)
    with pytest.raises(ValueError, match="embedding_dim"):
        train_autoencoder(tiny_unet(), x, torch.randn(len(x), DIM + 2), CFG, progress=False)
    with pytest.raises(ValueError, match="16x16"):
        train_autoencoder(tiny_unet(), torch.zeros(4, 3, 8, 8, dtype=torch.uint8), z[:4], CFG, progress=False)


# ---------------------------------------------------------------------------- presets
def test_presets():
    assert set(PRESETS) >= {"square32_cpu", "square64_paper", "celeba128_paper"}
    cpu = get_preset("square32_cpu").build_unet(512)
    assert cpu.config.sample_size == 32 and 1.0 <= cpu.num_parameters_millions <= 2.0
    assert get_preset("square32_cpu").train.max_minutes <= 15
    assert get_preset("square64_paper").image_size == 64 and get_preset("celeba128_paper").image_size == 128
    for name in ("square64_paper", "celeba128_paper"):
        preset = get_preset(name)
        assert tuple(preset.unet["block_out_channels"]) == (64, 128, 256, 512)
        assert preset.unet["layers_per_block"] == 2
        # attention exactly at the 16x16 level
        levels = [preset.image_size // 2**i for i in range(4)]
        attn = [s for s, kind in zip(levels, preset.unet["down_block_types"]) if kind.startswith("Attn")]
        assert attn == [16]
    with pytest.raises(KeyError, match="square32_cpu"):
        get_preset("square32cpu")
    json.dumps({k: v.train.__dict__ for k, v in PRESETS.items()})  # recipes are plain data
