import torch
import torch.nn.functional as F
from torch import nn

from didae_xai.data.square import square_dataset
from didae_xai.metrics import group_report
from didae_xai.models import TimmClassifier, load_classifier, save_classifier
from didae_xai.models.training import TrainConfig, attribute_loss, fit, train_attribute_model, train_classifier


def _toy(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def test_fit_learns_a_separable_problem():
    x, y = _toy()
    model = nn.Linear(5, 2)
    hist = fit(model, x, y, F.cross_entropy, TrainConfig(epochs=30, lr=0.1, batch_size=32, seed=0), progress=False)
    assert hist["loss"][-1] < hist["loss"][0] / 3
    assert (model(x).argmax(1) == y).float().mean() > 0.95


def test_fit_resumes_exactly_from_checkpoint(tmp_path):
    x, y = _toy()
    cfg = TrainConfig(epochs=6, lr=0.05, batch_size=32, seed=1)
    torch.manual_seed(0)
    full = nn.Linear(5, 2)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    fit(full, x, y, F.cross_entropy, cfg, progress=False)

    # Interrupted after 3 epochs, then resumed with the same recipe from the checkpoint.
    ckpt = tmp_path / "ckpt.pt"
    part = nn.Linear(5, 2)
    part.load_state_dict(init)
    fit(part, x, y, F.cross_entropy, TrainConfig(**{**cfg.__dict__, "epochs": 3}), checkpoint=ckpt, progress=False)
    resumed = nn.Linear(5, 2)  # fresh weights: everything must come from the checkpoint
    hist = fit(resumed, x, y, F.cross_entropy, cfg, checkpoint=ckpt, progress=False)
    assert hist["resumed_from"] == 3 and len(hist["loss"]) == 6
    for k in init:
        assert torch.allclose(resumed.state_dict()[k], full.state_dict()[k], atol=1e-6)


def test_validation_selects_best_epoch():
    x, y = _toy()
    scores = iter([0.1, 0.9, 0.2])
    model = nn.Linear(5, 2)
    hist = fit(model, x, y, F.cross_entropy, TrainConfig(epochs=3, seed=0), validate=lambda m: next(scores), progress=False)
    assert hist["best_epoch"] == 1 and hist["best_val"] == 0.9


def test_class_balanced_sampling_draws_classes_equally():
    from didae_xai.models.training import _epoch_order

    labels = torch.tensor([0] * 90 + [1] * 10)
    order = _epoch_order(100, labels, TrainConfig(class_balanced=True), torch.Generator().manual_seed(0))
    share = labels[order].float().mean().item()
    assert 0.35 < share < 0.65


def test_classifier_trains_saves_and_loads(tmp_path):
    data = square_dataset(128, size=16, seed=0)
    model = TimmClassifier("test_resnet", num_classes=2, image_size=16)
    train_classifier(model, data, TrainConfig(epochs=2, lr=1e-3, batch_size=32, optimizer="adam"), progress=False)
    save_classifier(model, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    x = data.float_images()[:8]
    assert torch.allclose(model.predict_logits(x), loaded.predict_logits(x), atol=1e-6)
    assert model.features(x).shape == (8, model.head.in_features)
    assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-6)
    report = group_report(loaded.predict(data.float_images()), data.y, data.a)
    assert set(report) == {"group_accuracy", "aga", "wga", "accuracy"}


def test_attribute_model_mixed_loss():
    loss = attribute_loss(2)
    out = torch.tensor([[10.0, -10.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 0.5]])
    assert loss(out, target).item() < 1e-3
    data = square_dataset(64, size=16, seed=0)
    model, hist = train_attribute_model(data, ["ClassA", "ClassB"], ["ColorA"], TrainConfig(epochs=1, batch_size=32),
                                        arch="test_resnet", val=data, progress=False)
    assert model.num_classes == 3 and len(hist["val"]) == 1


def test_cosine_schedule_decays_to_zero():
    from didae_xai.models.training import learning_rate as _learning_rate

    cfg = TrainConfig(lr=0.1, lr_schedule="cosine")
    assert _learning_rate(cfg, 0, 100) == 0.1
    assert abs(_learning_rate(cfg, 50, 100) - 0.05) < 1e-12
    assert _learning_rate(cfg, 100, 100) < 1e-12
    assert _learning_rate(TrainConfig(lr=0.1), 99, 100) == 0.1


def test_predict_labels_scales_uint8_batches_and_restores_the_mode():
    from didae_xai.models.inference import as_unit_float, predict_labels

    class MeanRed(nn.Module):
        """Class 1 when the mean red value exceeds 0.5 (on [0, 1] inputs)."""

        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            red = x[:, 0].mean((1, 2)) - 0.5 + self.bias
            return torch.stack([-red, red], 1)

    images = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8)
    model = MeanRed().train()
    expected = (images[:, 0].float().mean((1, 2)) / 255 > 0.5).long()
    assert torch.equal(predict_labels(model, images, batch_size=3), expected)  # uint8 scaled, batches joined
    assert torch.equal(predict_labels(model, as_unit_float(images), batch_size=2), expected)
    assert model.training  # the caller's mode is restored
    empty = predict_labels(model, images[:0])
    assert empty.dtype == torch.long and empty.numel() == 0
