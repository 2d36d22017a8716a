import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import open_clip  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from didae_xai import registry  # noqa: E402
from didae_xai.backbones import (  # noqa: E402
    Backbone,
    OpenCLIPBackbone,
    TimmBackbone,
    load_state_dict_file,
    load_weights_into,
)

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 4, "layers": 1},
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(n=4, size=32):
    return torch.rand(n, 3, size, size)


def save_safetensors(state_dict, path):
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def timm_reference(model, x):
    """Embedding of a timm model (any head) on images x at the model's size, normalised with timm's 0.5/0.5."""
    model.eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features((x - 0.5) / 0.5), pre_logits=True)


@pytest.fixture()
def tiny_clip(tmp_path):
    """A tiny OpenCLIP model, its JSON config path, and a function computing its reference embeddings."""
    config_path = tmp_path / "tiny-clip-test.json"
    config_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config_path)
    model = open_clip.create_model("tiny-clip-test", pretrained=None).eval()
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def reference(x):
        with torch.no_grad():
            return model.encode_image((x - mean) / std)

    return model, config_path, reference


# --- timm ------------------------------------------------------------------------------------------------


def test_timm_embeddings_have_embedding_dim_and_match_forward():
    backbone = TimmBackbone("test_resnet", image_size=32, allow_random=True)
    x = images(5)
    z = backbone.embed(x, batch_size=2, progress=True)
    assert backbone.embedding_dim == 96 and backbone.image_size == 32 and backbone.in_chans == 3
    assert z.shape == (5, 96)
    torch.testing.assert_close(z, backbone(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(backbone.mean, torch.tensor([0.5, 0.5, 0.5]))
    assert backbone.embed(x[:0]).shape == (0, 96)


def test_timm_embedding_dim_is_the_output_size_for_models_with_pre_logits():
    # test_mambaout has num_features=64 but a 256-wide pre-logits layer: the embedding is 256 wide.
    backbone = TimmBackbone("test_mambaout", image_size=32, allow_random=True)
    assert backbone.embedding_dim == 256 == backbone(images(2)).shape[1]


def test_timm_defaults_come_from_the_data_config():
    backbone = TimmBackbone("test_vit", allow_random=True)
    assert backbone.image_size == 160 and backbone.interpolation == "bicubic"
    assert TimmBackbone("test_resnet", allow_random=True).interpolation == "bilinear"


def test_preprocess_resizes_antialiased_then_normalises():
    backbone = TimmBackbone("test_resnet", image_size=16, allow_random=True)
    flat = backbone.preprocess(torch.full((2, 3, 32, 32), 0.75))
    assert flat.shape == (2, 3, 16, 16)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.5))
    x = images(2)
    expected = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(backbone.preprocess(x), (expected - 0.5) / 0.5)
    same = TimmBackbone("test_resnet", image_size=32, allow_random=True).preprocess(x)
    torch.testing.assert_close(same, (x - 0.5) / 0.5)


def test_missing_weights_warn_unless_allowed():
    with pytest.warns(UserWarning, match="randomly initialised"):
        TimmBackbone("test_resnet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TimmBackbone("test_resnet", allow_random=True)


def test_params_are_frozen_but_gradients_reach_the_input():
    backbone = TimmBackbone("test_resnet", image_size=32, allow_random=True)
    x = images(2).requires_grad_(True)
    backbone(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())


def test_train_on_a_parent_keeps_the_backbone_in_eval():
    backbone = TimmBackbone("test_resnet", image_size=32, allow_random=True)
    head = nn.Linear(backbone.embedding_dim, 2)
    parent = nn.Sequential(backbone, head).train()
    assert head.training
    assert not any(m.training for m in backbone.modules())
    bn = next(m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    running_mean = bn.running_mean.clone()
    x = images(3)
    z_train = parent[0](x)
    torch.testing.assert_close(bn.running_mean, running_mean)  # BatchNorm statistics untouched
    torch.testing.assert_close(z_train, backbone.eval()(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("model_name", ["test_resnet", "test_vit"])
def test_timm_round_trip(tmp_path, suffix, model_name):
    kwargs = {"img_size": 32} if model_name == "test_vit" else {}
    source = timm.create_model(model_name, num_classes=0, **kwargs)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_safetensors(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    backbone = TimmBackbone(model_name, weights=path, image_size=32, **kwargs)
    x = images(3)
    torch.testing.assert_close(backbone.embed(x), timm_reference(source, x), atol=1e-5, rtol=0)


def test_timm_checkpoint_with_classifier_head_loads(tmp_path):
    source = timm.create_model("test_resnet", num_classes=8)
    state = {"module." + k: v for k, v in source.state_dict().items()}
    # timm's train.py layout: wrapped state dict, plus argparse arguments.
    checkpoint = {"epoch": 3, "arch": "test_resnet", "state_dict": state, "args": argparse.Namespace(lr=0.1)}
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    assert "fc.weight" in load_state_dict_file(path)
    backbone = TimmBackbone("test_resnet", weights=path, image_size=32)
    x = images(3)
    torch.testing.assert_close(backbone.embed(x), timm_reference(source, x), atol=1e-5, rtol=0)


def test_from_model_copies_and_leaves_the_callers_model_untouched():
    source = timm.create_model("test_resnet", num_classes=8)
    backbone = TimmBackbone.from_model(source, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert source.num_classes == 8 and source.fc.out_features == 8
    assert all(p.requires_grad for p in source.parameters())
    x = images(3)
    assert source.eval()(x).shape == (3, 8)
    torch.testing.assert_close(backbone.embed(x), timm_reference(source, x), atol=1e-5, rtol=0)
    assert backbone.embedding_dim == 96 and not any(p.requires_grad for p in backbone.parameters())


def test_timm_rejects_pretrained_download():
    with pytest.raises(ValueError, match="pretrained"):
        TimmBackbone("test_resnet", pretrained=True)


# --- weight files --------------------------------------------------------------------------------------


def test_missing_weight_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "resnet.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere/resnet.safetensors"):
        TimmBackbone("test_resnet", weights=path)


def test_unknown_extension_is_an_error(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"0")
    with pytest.raises(ValueError, match="extension '.npz'"):
        load_state_dict_file(path)


def test_non_state_dict_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"epoch": 1, "weights": {"a": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not a state dict.*epoch"):
        load_state_dict_file(path)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path):
    path = save_safetensors(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match=r"do not match the architecture ResNet: \d+ missing keys: conv1"):
        TimmBackbone("test_resnet", weights=path)


def test_shape_mismatch_is_listed(tmp_path):
    source = timm.create_model("test_vit", num_classes=0, img_size=32)
    path = save_safetensors(source.state_dict(), tmp_path / "vit32.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatches: pos_embed \(file \(1, 5, 64\), model \(1, 101, 64\)\)"):
        TimmBackbone("test_vit", weights=path)


def test_load_weights_into_ignores_prefixes():
    source = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    target = nn.Sequential(nn.Linear(2, 3))
    load_weights_into(target, source.state_dict(), ignore_prefixes="1.")
    torch.testing.assert_close(target[0].weight, source[0].weight)


# --- input validation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_backbone():
    return TimmBackbone("test_resnet", image_size=32, resize=False, allow_random=True)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(3, 32, 32), "4-D batch"),
        (torch.rand(2, 1, 32, 32), "expects 3 channels"),
        (torch.rand(2, 32, 32, 3), "expects 3 channels"),
        (torch.rand(2, 3, 48, 48), "resize=False and expects 32x32 images; got 48x48"),
        (torch.rand(2, 3, 32, 32) * 255, r"expects images in \[0, 1\].*own normalisation"),
        (torch.rand(2, 3, 32, 32) * 2 - 1, r"expects images in \[0, 1\]"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        ((torch.rand(2, 3, 32, 32) * 255).to(torch.uint8), "float images.*/ 255"),
    ],
)
def test_invalid_images_raise_clear_errors(strict_backbone, x, match):
    with pytest.raises(ValueError, match=match):
        strict_backbone(x)


def test_slightly_out_of_range_images_are_accepted(strict_backbone):
    x = images(2) * 1.04 - 0.02  # e.g. bicubic overshoot
    assert strict_backbone(x).shape == (2, 96)


def test_backbone_wraps_any_encoder():
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    backbone = Backbone(encoder, embedding_dim=5, image_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert backbone(images(2, size=20)).shape == (2, 5)
    assert backbone.state_dict().keys() == {"encoder.1.weight", "encoder.1.bias"}


# --- OpenCLIP ------------------------------------------------------------------------------------------


def test_openclip_round_trip_in_every_file_format(tmp_path, tiny_clip):
    model, config_path, reference = tiny_clip
    state = model.state_dict()
    files = {
        "safetensors": save_safetensors(state, tmp_path / "model.safetensors"),
        "pth": tmp_path / "model.pth",
        "open_clip checkpoint": tmp_path / "epoch_1.pt",
        "image tower only": save_safetensors(model.visual.state_dict(), tmp_path / "visual.safetensors"),
    }
    torch.save(state, files["pth"])
    torch.save({"epoch": 1, "name": "run", "state_dict": {"module." + k: v for k, v in state.items()}}, files["open_clip checkpoint"])
    x = images(3)
    for kind, path in files.items():
        backbone = OpenCLIPBackbone(config_path, weights=path)
        assert backbone.embedding_dim == 32 and backbone.image_size == 32, kind
        torch.testing.assert_close(backbone.embed(x), reference(x), atol=1e-5, rtol=0, msg=kind)
    assert not any(name.startswith("transformer") for name, _ in backbone.named_parameters())  # text tower dropped


def test_openclip_normalisation_resize_and_gradients(tmp_path, tiny_clip):
    model, config_path, reference = tiny_clip
    path = save_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    backbone = OpenCLIPBackbone(config_path, weights=path)
    torch.testing.assert_close(backbone.mean, torch.tensor(open_clip.OPENAI_DATASET_MEAN))
    big = images(2, size=64)
    small = F.interpolate(big, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(backbone.embed(big), reference(small), atol=1e-5, rtol=0)
    x = images(2).requires_grad_(True)
    backbone(x).sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in backbone.parameters())
    nn.Sequential(backbone).train()
    assert not backbone.training


def test_openclip_image_size_override_interpolates_position_embeddings(tmp_path, tiny_clip):
    model, config_path, _ = tiny_clip
    path = save_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    backbone = OpenCLIPBackbone(config_path, weights=path, image_size=16)
    assert backbone.image_size == 16
    assert backbone.encoder.positional_embedding.shape == (2 * 2 + 1, 64)
    assert backbone(images(2, size=16)).shape == (2, 32)


def test_openclip_errors(tmp_path, tiny_clip):
    _, config_path, _ = tiny_clip
    with pytest.raises(ValueError, match="Unknown OpenCLIP architecture 'ViT-B-33'.*ViT-B-32"):
        OpenCLIPBackbone("ViT-B-33")
    with pytest.raises(ValueError, match="never downloads"):
        OpenCLIPBackbone("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        OpenCLIPBackbone(tmp_path / "missing.json")
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"model_cfg": TINY_CLIP}))
    with pytest.raises(ValueError, match="needs the top-level keys embed_dim"):
        OpenCLIPBackbone(bad_config)
    resnet = save_safetensors(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(ValueError, match="do not match the architecture VisionTransformer"):
        OpenCLIPBackbone(config_path, weights=resnet)
    with pytest.warns(UserWarning, match="randomly initialised"):
        OpenCLIPBackbone(config_path)


# --- registry ------------------------------------------------------------------------------------------


def test_registry_creates_backbones(tmp_path, tiny_clip):
    assert {"timm", "open_clip"} <= set(registry.names("backbone"))
    descriptions = {e.name: e.description for e in registry.entries("backbone")}
    assert descriptions["timm"] and descriptions["open_clip"]
    source = timm.create_model("test_resnet", num_classes=0)
    path = save_safetensors(source.state_dict(), tmp_path / "resnet.safetensors")
    backbone = registry.create("backbone", "timm", model_name="test_resnet", weights=path, image_size=32)
    x = images(2)
    torch.testing.assert_close(backbone.embed(x), timm_reference(source, x), atol=1e-5, rtol=0)
    model, config_path, reference = tiny_clip
    clip_path = save_safetensors(model.state_dict(), tmp_path / "clip.safetensors")
    clip = registry.create("backbone", "open_clip", arch=str(config_path), weights=clip_path)
    torch.testing.assert_close(clip.embed(x), reference(x), atol=1e-5, rtol=0)
