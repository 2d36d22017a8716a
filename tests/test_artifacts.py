import pytest
import torch

from didae_xai.benchmark import load_artifacts
from didae_xai.models import ProbeClassifier, TimmClassifier, save_classifier


def test_artifacts_round_trip_share_one_backbone(tmp_path):
    torch.manual_seed(0)
    fm = TimmClassifier("test_resnet", num_classes=8, image_size=16).eval()
    backbone = fm.as_backbone()
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(backbone(x), fm.features(x))
    probe = ProbeClassifier(backbone, num_classes=2)
    save_classifier(fm, tmp_path / "fm")
    save_classifier(probe, tmp_path / "probe")
    art = load_artifacts(tmp_path)
    assert set(art.students) == {"probe"} and art.teacher is None and art.autoencoder is None
    assert art.students["probe"].backbone is art.backbone
    torch.testing.assert_close(art.students["probe"](x), probe(x))


def test_missing_foundation_model_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/students.py --out"):
        load_artifacts(tmp_path)
