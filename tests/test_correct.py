"""Correctors on a tiny planted problem where the right answer is known.

Images are 3x2x2 uint8; a classifier reads its three features from the channel means: red = the core
feature (predicts y, noisy), green = the planted spurious feature (equals the confounder a, clean),
blue = noise. The poisoned training set pairs y=0 with a=1 and y=1 with a=0 (98 %), so ERM leans on
green and fails on the minority groups of the balanced test set.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from didae_xai import registry
from didae_xai.correct import (
    CFKD,
    DFR,
    ERM,
    AClarc,
    CorrectionData,
    GroupDRO,
    HeadWithFeatureEdit,
    OracleTeacher,
    PClarc,
    PreclusteredTeacher,
    Projection,
    RRClarc,
    atom_patterns,
    concept_direction,
    correct_and_evaluate,
    evaluate,
    orthonormal_basis,
    project_out,
)
from didae_xai.correct.edits import SubspaceProjection
from didae_xai.correct.teachers import (
    ADVERSARIAL,
    FALSE,
    NOT_SWAPPED,
    OUT_OF_DISTRIBUTION,
    STUDENT_WRONG,
    TEACHER_WRONG,
    TRUE,
)
from didae_xai.data.base import ImageDataset
from didae_xai.dictionary import ProcrustesDictionary
from didae_xai.explain.explanation import CounterfactualExplanation
from didae_xai.models.classifiers import Classifier
from didae_xai.models.training import TrainConfig, fit

CORE, SPURIOUS, NOISE = 0, 1, 2
HEAD_FAST = TrainConfig(epochs=40, lr=0.05, batch_size=64, optimizer="adam")


class ChannelMeans(Classifier):
    """features = 2 * channel mean - 1 (core, spurious, noise), optionally through a trainable body."""

    def __init__(self, trainable_body: bool = False, num_classes: int = 2):
        super().__init__()
        self.body = None
        if trainable_body:
            self.body = nn.Linear(3, 3)
            with torch.no_grad():
                self.body.weight.copy_(torch.eye(3))
                self.body.bias.zero_()
        self.head = nn.Linear(3, num_classes)

    def features(self, x):
        m = 2 * x.mean((2, 3)) - 1
        return self.body(m) if self.body is not None else m


def encode(feats: torch.Tensor) -> torch.Tensor:
    """Features in [-1, 1] (N, 3) -> uint8 images (N, 3, 2, 2) whose channel means decode to them."""
    v = ((feats.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return v[:, :, None, None].expand(-1, -1, 2, 2).contiguous()


def planted(counts: dict[int, int], seed: int, name: str) -> ImageDataset:
    """Groups g = 2y + a with the given counts; core ~ y (noisy), spurious = a (clean), noise."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.cat([torch.full((n,), grp) for grp, n in counts.items()])
    y, a = groups // 2, groups % 2
    core = (2 * y - 1) * 0.3 + 0.3 * torch.randn(len(y), generator=g)
    spur = (2 * a - 1) * 0.5 + 0.05 * torch.randn(len(y), generator=g)
    noise = 0.3 * torch.randn(len(y), generator=g)
    return ImageDataset(images=encode(torch.stack([core, spur, noise], 1)), y=y, a=a, name=name)


POISONED = {0: 10, 1: 150, 2: 150, 3: 10}


@pytest.fixture(scope="module")
def problem():
    train = planted(POISONED, 0, "train")
    val = planted({0: 10, 1: 40, 2: 40, 3: 10}, 1, "val")
    test = planted({0: 100, 1: 100, 2: 100, 3: 100}, 2, "test")
    dfr = planted({0: 12, 1: 12, 2: 12, 3: 12}, 3, "dfr")
    return CorrectionData(train, val, dfr=dfr), test


def erm_student(train: ImageDataset, trainable_body: bool = False) -> ChannelMeans:
    torch.manual_seed(0)
    model = ChannelMeans(trainable_body)
    if trainable_body:
        model.body.requires_grad_(False)
    feats = model.features(train.float_images()).detach()
    fit(model.head, feats, train.y, F.cross_entropy, HEAD_FAST, progress=False)
    if trainable_body:
        model.body.requires_grad_(True)
    return model.eval()


@pytest.fixture(scope="module")
def erm(problem):
    data, test = problem
    student = erm_student(data.train)
    return student, evaluate(student, test)


def assert_json(record: dict) -> None:
    json.loads(json.dumps(record))


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_planted_shortcut_fools_erm(erm):
    _, report = erm
    assert report["wga"] < 0.5 < report["aga"]


# ------------------------------------------------------------------------------ projection and edits
def test_projection_math_removes_the_span_exactly():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 6, generator=g)
    dirs = torch.randn(2, 6, generator=g)
    q = orthonormal_basis(dirs)
    assert torch.allclose(q.T @ q, torch.eye(2), atol=1e-6)
    p = project_out(h, q)
    assert torch.allclose(p @ dirs.T, torch.zeros(50, 2), atol=1e-5)
    assert torch.allclose(project_out(p, q), p, atol=1e-6)  # idempotent
    rest = h - (h @ q) @ q.T
    assert torch.allclose(p, rest)
    with pytest.raises(ValueError, match="dependent"):
        orthonormal_basis(torch.stack([dirs[0], 2 * dirs[0]]))


def test_projection_removes_planted_direction_and_helps(problem, erm):
    data, test = problem
    student, report = erm
    before = state(student)
    v = torch.tensor([[0.0, 1.0, 0.0]])
    result = Projection(v).correct(student, data)
    model = result.model
    x = test.float_images()
    h = model.features(x)
    assert torch.allclose(h[:, SPURIOUS], torch.zeros(len(h)), atol=1e-6)
    raw = student.features(x)
    assert torch.allclose(h[:, [CORE, NOISE]], raw[:, [CORE, NOISE]])
    assert torch.allclose(model(x), student.head(raw * torch.tensor([1.0, 0.0, 1.0])), atol=1e-6)
    assert result.record["labels_used"] == ["atom verdicts"] and result.record["transfer"] == "none"
    assert_json(result.record)
    assert evaluate(model, test)["wga"] > report["wga"] + 0.2
    assert_same(student, before)  # the caller's student is untouched


def test_projection_from_dictionary_atom_and_pattern_transfer(problem, erm):
    data, _ = problem
    student, _ = erm
    z = student.features(data.dfr.float_images()).detach()
    y = torch.stack([data.dfr.y, data.dfr.a], 1).float()
    dictionary = ProcrustesDictionary(["core", "spurious"]).fit(z, y)
    result = Projection(dictionary=dictionary, atoms=("spurious",)).correct(student, data)
    u = dictionary.components_[1].float()
    h = result.model.features(data.train.float_images())
    assert result.record["atoms"] == ["spurious"]
    assert torch.allclose(h @ u, torch.zeros(len(h)), atol=1e-5)

    # A student whose features are a rotation of the embedding: the atom is carried over as a pattern.
    g = torch.Generator().manual_seed(0)
    zz = torch.randn(4000, 3, generator=g)
    rot, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    pattern = atom_patterns(zz, zz @ rot, torch.tensor([[0.0, 1.0, 0.0]]))[0]
    assert F.cosine_similarity(pattern, rot[1], dim=0) > 0.99
    # Atoms correlated in the data (confounder ~ task, as on poisoned data): only the joint regression
    # over all atoms (the context) separates the confounder's pattern from the task's.
    zc = zz.clone()
    zc[:, 1] = 0.95 * zz[:, 0] + 0.3 * zz[:, 1]
    atoms = torch.eye(3)
    alone = atom_patterns(zc, zc @ rot, atoms[1:2])[0]
    joint = atom_patterns(zc, zc @ rot, atoms[1:2], context=atoms)[0]
    assert F.cosine_similarity(joint, rot[1], dim=0) > 0.999 > F.cosine_similarity(alone, rot[1], dim=0) + 0.1
    with pytest.raises(ValueError, match="context"):
        atom_patterns(zc, zc, torch.tensor([[1.0, 1.0, 0.0]]), context=atoms)


def test_wrappers_stack_and_keep_features_and_head(erm):
    student, _ = erm
    e1 = SubspaceProjection(torch.tensor([0.0, 1.0, 0.0]))
    e2 = SubspaceProjection(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.25]))
    model = HeadWithFeatureEdit(HeadWithFeatureEdit(student, e1), e2)
    x = torch.rand(5, 3, 2, 2)
    h = model.features(x)
    assert torch.allclose(h[:, 1], torch.zeros(5), atol=1e-6) and torch.allclose(h[:, 2], torch.full((5,), 0.25))
    assert model.head is student.head and model.base_student is student
    assert torch.allclose(model(x), student.head(h))


# --------------------------------------------------------------------------------------- ClArC family
def test_concept_direction_is_the_planted_coordinate(problem, erm):
    data, _ = problem
    student, _ = erm
    h = student.features(data.train.float_images()).detach()
    v, info = concept_direction(h, data.train.a == 1, data.train.y, "per_class")
    assert v[SPURIOUS] > 0.98 and info["classes"] == [0, 1]
    assert info["clean_mean"] == pytest.approx(-0.5, abs=0.05) and info["artifact_mean"] == pytest.approx(0.5, abs=0.05)


def test_pclarc_moves_artifact_samples_to_the_clean_mean(problem, erm):
    data, test = problem
    student, report = erm
    result = PClarc().correct(student, data)
    v = result.artifacts["direction"]
    x = data.train.float_images()
    raw, h = student.features(x), result.model.features(x)
    clean = result.record["clean_mean"]
    assert torch.allclose(h @ v, torch.full((len(h),), clean), atol=1e-5)
    off = raw - (raw @ v)[:, None] * v  # the part orthogonal to v is untouched
    assert torch.allclose(h - (h @ v)[:, None] * v, off, atol=1e-5)
    assert result.record["labels_used"] == ["y", "artifact"]
    assert_json(result.record)
    assert evaluate(result.model, test)["wga"] > report["wga"]


def test_aclarc_trains_the_head_on_artifact_shifted_features(problem, erm):
    data, test = problem
    student, report = erm
    before = state(student)
    result = AClarc(config=HEAD_FAST, progress=False).correct(student, data)
    v = result.artifacts["direction"]
    h = result.model.features(data.train.float_images())
    assert torch.allclose(h @ v, torch.full((len(h),), result.record["artifact_mean"]), atol=1e-5)
    assert result.model.head is not student.head
    assert_json(result.record)
    assert evaluate(result.model, test)["wga"] > report["wga"] + 0.2
    assert_same(student, before)


def test_rrclarc_reduces_the_gradient_along_the_artifact(problem, erm):
    data, test = problem
    student, report = erm
    corrector = RRClarc(lam=100.0, config=HEAD_FAST, progress=False)
    result = corrector.correct(student, data)
    v = result.artifacts["direction"]
    rec = result.record
    assert rec["gradient_along_v_after"] < 0.1 * rec["gradient_along_v_before"]
    # The penalty is what autograd sees: mean over random signs of (dy/dh . v)^2 is small now.
    h = student.features(data.train.float_images()).detach()
    _, pen_after = corrector.penalty(result.model.head, h, data.train.y, v)
    _, pen_before = corrector.penalty(student.head, h, data.train.y, v)
    assert pen_after < 0.05 * pen_before
    assert type(result.model) is ChannelMeans  # only the head changed
    assert_json(rec)
    assert evaluate(result.model, test)["wga"] > report["wga"] + 0.2


# ------------------------------------------------------------------------------------ GroupDRO / DFR
def test_groupdro_weights_move_to_the_worst_groups_and_raise_wga(problem, erm):
    data, test = problem
    student, report = erm
    cfg = TrainConfig(epochs=40, lr=0.01, batch_size=64, optimizer="adam")
    result = GroupDRO(eta=0.01, config=cfg, progress=False).correct(student, data)
    q = torch.tensor(result.record["q"])
    assert q.sum().item() == pytest.approx(1.0)
    # The minority groups g0 and g3 (ERM's worst) gain weight; the majority groups lose it.
    assert q[0] > 0.3 and q[3] > 0.3 and q[1] < 0.2 and q[2] < 0.2
    assert result.record["trained"] == "head" and result.record["labels_used"] == ["y", "group"]
    assert_json(result.record)
    assert evaluate(result.model, test)["wga"] > report["wga"] + 0.2


def test_groupdro_fine_tunes_all_weights_of_end_to_end_students(problem):
    data, _ = problem
    student = erm_student(data.train, trainable_body=True)
    before = state(student)
    cfg = TrainConfig(epochs=3, lr=0.01, batch_size=64, optimizer="adam")
    result = GroupDRO(config=cfg, progress=False).correct(student, data)
    assert result.record["trained"] == "all weights"
    assert not torch.equal(result.model.body.weight, student.body.weight)
    assert len(result.record["q_history"]) == 3
    assert_same(student, before)
    head_only = GroupDRO(config=cfg, head_only=True, progress=False).correct(student, data)
    assert head_only.record["trained"] == "head" and torch.equal(head_only.model.body.weight, student.body.weight)


def test_dfr_balances_groups(problem, erm):
    data, test = problem
    student, report = erm
    result = DFR(n_retrains=5).correct(student, data)
    w = result.model.head.weight.detach()
    assert result.record["C"] in DFR().C_options and result.record["balanced_subsample"] == 48
    assert_json(result.record)
    assert (w[1] - w[0])[CORE].abs() > 3 * (w[1] - w[0])[SPURIOUS].abs()  # the new head reads the core
    assert evaluate(result.model, test)["wga"] > report["wga"] + 0.2


# ------------------------------------------------------------------------------------ CFKD and teachers
class FlipExplainer:
    """Counterfactual per atom: negate that feature channel. Scored by the explained model."""

    atoms = {"core": CORE, "spurious": SPURIOUS}

    def __init__(self, model):
        self.model = model
        self.calls = 0

    @torch.no_grad()
    def explain(self, x):
        self.calls += 1
        cfs = []
        for channel in self.atoms.values():
            cf = x.clone()
            cf[:, channel] = 1 - cf[:, channel]
            cfs.append(cf)
        cf = torch.stack(cfs, 1)
        probs = self.model(x).softmax(1)
        pred = probs.argmax(1)
        target = 1 - pred
        cf_probs = self.model(cf.flatten(0, 1)).softmax(1).reshape(len(x), 2, -1)
        conf = cf_probs.gather(2, target[:, None, None].expand(-1, 2, 1)).squeeze(2)
        return CounterfactualExplanation(
            factuals=x, counterfactuals=cf, atoms=[0, 1], atom_names=list(self.atoms), target=target,
            factual_pred=pred, factual_confidence=probs.max(1).values, cf_pred=cf_probs.argmax(2),
            cf_target_confidence=conf, flipped=cf_probs.argmax(2) == target[:, None],
            movable=torch.ones(len(x), 2, dtype=torch.bool), method="flip",
        )


def test_cfkd_dataset_holds_the_false_counterfactuals_with_original_labels(problem, erm):
    data, test = problem
    student, report = erm
    before = state(student)
    cfkd = CFKD(FlipExplainer(student), PreclusteredTeacher(true_atoms=("core",)), config=HEAD_FAST,
                max_factuals=60, max_val_factuals=20, explain_batch_size=16, progress=False)
    result = cfkd.correct(student, data)
    cf = result.artifacts["counterfactual_dataset"]
    assert cf is cfkd.counterfactual_dataset_

    # Expected: every correctly classified chosen factual whose spurious flip flips the student.
    x = data.train.float_images()
    pred = student(x).argmax(1)
    sources = result.artifacts["sources"]
    assert all(s["atom"] == "spurious" and s["verdict"] == FALSE for s in sources)
    idx = torch.tensor([s["index"] for s in sources])
    assert (pred[idx] == data.train.y[idx]).all()
    assert torch.equal(cf.y, data.train.y[idx])  # the original labels
    flipped = x[idx].clone()
    flipped[:, SPURIOUS] = 1 - flipped[:, SPURIOUS]
    assert torch.equal(cf.images, (flipped * 255).round().to(torch.uint8))
    assert (student(flipped).argmax(1) != data.train.y[idx]).all()  # Clever-Hans flips
    assert cf.ids[0] == f"{data.train.ids[int(idx[0])]}/cf:spurious" and (cf.a == -1).all()

    rec = result.record
    assert rec["n_factuals"] == 60 and rec["n_counterfactuals"] == 120
    assert rec["verdicts"][FALSE] == len(cf) == rec["n_train_counterfactuals"] > 0
    assert rec["train_counterfactuals_by_atom"] == {"spurious": len(cf)}  # only the shortcut atom's flips are kept
    n_true = rec["verdicts"].get(TRUE, 0)
    assert rec["feedback_accuracy"] == pytest.approx(n_true / (n_true + len(cf)))
    assert rec["labels_used"] == ["y", "atom verdicts"] and rec["trained"] == "head"
    assert 0 <= rec["selected_epoch"] < HEAD_FAST.epochs
    assert_json(rec)
    # Distilling the counterexamples removes the shortcut.
    assert evaluate(result.model, test)["wga"] > report["wga"] + 0.2
    assert_same(student, before)


def test_cfkd_fine_tunes_end_to_end_students_with_an_oracle(problem):
    data, _ = problem
    student = erm_student(data.train, trainable_body=True)
    teacher = ChannelMeans()
    with torch.no_grad():  # the oracle reads the core feature only
        teacher.head.weight.copy_(torch.tensor([[-5.0, 0, 0], [5.0, 0, 0]]))
        teacher.head.bias.zero_()
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=32, optimizer="adam")
    result = CFKD(FlipExplainer(student), OracleTeacher(teacher), config=cfg, max_factuals=40,
                  max_val_factuals=0, progress=False).correct(student, data)
    rec = result.record
    assert rec["trained"] == "all weights" and rec["labels_used"] == ["y", "teacher"]
    assert rec["n_val_counterfactuals"] == 0 and rec["selection"] == "val accuracy"
    assert not torch.equal(result.model.body.weight, student.body.weight)


def _explanation(factual_feats, cf_feats, factual_pred, target, conf):
    n = len(factual_feats)
    cf_pred = torch.where(conf >= 0.5, target, 1 - target)
    return CounterfactualExplanation(
        factuals=encode(factual_feats).float() / 255, counterfactuals=(encode(cf_feats).float() / 255)[:, None],
        atoms=[0], atom_names=["core"], target=target, factual_pred=factual_pred,
        factual_confidence=torch.ones(n), cf_pred=cf_pred[:, None], cf_target_confidence=conf[:, None],
        flipped=(cf_pred == target)[:, None], movable=torch.ones(n, 1, dtype=torch.bool),
    )


def test_oracle_teacher_filters_hand_made_cases():
    teacher_model = ChannelMeans()
    surrogate = ChannelMeans()
    with torch.no_grad():
        teacher_model.head.weight.copy_(torch.tensor([[-5.0, 0, 0], [5.0, 0, 0]]))  # class 1 iff core > 0
        surrogate.head.weight.copy_(torch.tensor([[0.0, 0, -5], [0, 0, 5]]))  # class 1 iff noise > 0
        teacher_model.head.bias.zero_()
        surrogate.head.bias.zero_()
    # label 1 everywhere; factual core > 0 except case 1 (the teacher is wrong there)
    factual = torch.tensor([[0.5, 0, 0.5]] * 7)
    factual[1, CORE] = -0.5
    cf = factual.clone()
    cf[:, NOISE] = -0.5  # the surrogate flips to target 0 ...
    cf[3, NOISE] = 0.5  # ... except for case 3
    cf[4, CORE] = -0.5  # the teacher's prediction changes: a legitimate flip
    labels = torch.ones(7, dtype=torch.long)
    pred = torch.tensor([0, 1, 1, 1, 1, 1, 1])  # case 0: the student was wrong
    conf = torch.tensor([0.9, 0.9, 0.3, 0.9, 0.9, 0.9, 0.9])  # case 2: not swapped
    exp = _explanation(factual, cf, pred, torch.zeros(7, dtype=torch.long), conf)
    ood = lambda f, c: torch.tensor([0, 0, 0, 0, 0, 0, 9.0])[:, None]  # noqa: E731 - case 6: out of distribution
    verdicts = OracleTeacher(teacher_model, surrogate=surrogate, ood_score=ood).verdicts(exp, labels)
    assert verdicts == [STUDENT_WRONG, TEACHER_WRONG, NOT_SWAPPED, ADVERSARIAL, TRUE, FALSE, OUT_OF_DISTRIBUTION]
    # Without the surrogate case 3 is an ordinary Clever-Hans flip; without the OOD filter case 6 too.
    assert OracleTeacher(teacher_model).verdicts(exp, labels)[3:] == [FALSE, TRUE, FALSE, FALSE]


def test_preclustered_teacher_uses_the_atom_verdicts():
    n = 3
    x = torch.rand(n, 3, 2, 2)
    exp = CounterfactualExplanation(
        factuals=x, counterfactuals=torch.stack([x, x, x], 1), atoms=[0, 1, 2], atom_names=["ColorA", "ColorB", "PosX"],
        target=torch.zeros(n, dtype=torch.long), factual_pred=torch.tensor([1, 1, 0]), factual_confidence=torch.ones(n),
        cf_pred=torch.zeros(n, 3, dtype=torch.long), cf_target_confidence=torch.tensor([[0.9, 0.9, 0.9], [0.9, 0.2, 0.9], [0.9] * 3]),
        flipped=torch.ones(n, 3, dtype=torch.bool), movable=torch.ones(n, 3, dtype=torch.bool),
    )
    labels = torch.tensor([1, 1, 1])
    assert PreclusteredTeacher(("ColorA",)).verdicts(exp, labels) == [
        TRUE, FALSE, FALSE, TRUE, NOT_SWAPPED, FALSE, STUDENT_WRONG, STUDENT_WRONG, STUDENT_WRONG]
    assert PreclusteredTeacher((0, 2)).verdicts(exp, labels)[:3] == [TRUE, FALSE, TRUE]
    with pytest.warns(UserWarning, match="colorA"):
        PreclusteredTeacher(("colorA",)).verdicts(exp, labels)


# ------------------------------------------------------------------------------- interface and errors
def test_evaluate_and_results_row(problem, erm):
    data, test = problem
    student, report = erm
    row = correct_and_evaluate(ERM(), student, data, test)
    assert row["gain"] == pytest.approx(0.0) and row["aga"] == pytest.approx(report["aga"])
    assert row["labels_used"] == ["y"] and row["minutes"] >= 0 and set(row["group_accuracy"]) == {"g0", "g1", "g2", "g3"}
    assert evaluate(student, test)["gain"] is None
    assert evaluate(student, test, baseline_aga=report["aga"] - 0.1)["gain"] > 0


def test_registry_creates_every_corrector():
    names = set(registry.names("corrector"))
    assert {"erm", "p_clarc", "a_clarc", "rr_clarc", "groupdro", "dfr", "projection", "cfkd"} <= names
    assert registry.create("corrector", "groupdro", eta=0.02).eta == 0.02
    assert registry.get("corrector", "dfr").source == "didae_xai"


def test_clear_errors(problem, erm):
    data, _ = problem
    student, _ = erm
    no_groups = CorrectionData(data.train, data.val, data.dfr, labels=("y",))
    with pytest.raises(ValueError, match="groupdro needs 'group' labels"):
        GroupDRO().correct(student, no_groups)
    with pytest.raises(ValueError, match="p_clarc needs 'artifact' labels"):
        PClarc().correct(student, CorrectionData(data.train, data.val, labels=("y", "group")))
    unknown = data.train.subset(torch.arange(len(data.train)))
    unknown.a = torch.full_like(unknown.a, -1)
    with pytest.raises(ValueError, match="unknown confounder label"):
        GroupDRO().correct(student, CorrectionData(unknown, data.val))
    no_g3 = data.train.subset(torch.nonzero(data.train.groups != 3).flatten())
    with pytest.raises(ValueError, match=r"group g3 \(y=1, a=1\) of train is empty"):
        GroupDRO().correct(student, CorrectionData(no_g3, data.val))
    with pytest.raises(ValueError, match="group g3"):
        DFR().correct(student, CorrectionData(data.train, data.val, dfr=no_g3))
    with pytest.raises(ValueError, match="DFR needs the small group-balanced set"):
        DFR().correct(student, CorrectionData(data.train, data.val))
    with pytest.raises(ValueError, match="needs an explainer"):
        CFKD(None, PreclusteredTeacher())
    with pytest.raises(ValueError, match="needs a teacher"):
        CFKD(FlipExplainer(student), None)
    three = OracleTeacher(ChannelMeans(num_classes=3))
    with pytest.raises(ValueError, match="teacher predicts 3 classes but the student 2"):
        CFKD(FlipExplainer(student), three, progress=False).correct(student, data)
    with pytest.raises(ValueError, match="needs directions"):
        Projection()
    with pytest.raises(ValueError, match="dimension 4 but the student's features have dimension 3"):
        Projection(torch.ones(4)).correct(student, data)
    with pytest.raises(TypeError, match="features"):
        ERM().correct(nn.Linear(3, 2), data)
    with pytest.raises(ValueError, match="head_only=False"):
        GroupDRO(head_only=False).correct(student, data)


# ---------------------------------------------------------------------- with the package's real pieces
def test_real_students_explainer_and_benchmark_data(tmp_path):
    from didae_xai.autoencoder import ConditionalUNet, DiffusionAutoencoder
    from didae_xai.backbones import TimmBackbone
    from didae_xai.data.square import square_benchmark
    from didae_xai.explain import DiDAE
    from didae_xai.models import TimmClassifier, load_classifier, save_classifier
    from didae_xai.models.training import train_classifier, train_probe

    bench = square_benchmark(size=16, n_generator=64, test_per_group=8, n_poisoned=100, p=0.1, dfr_size=16)
    data = CorrectionData.from_benchmark(bench)
    torch.manual_seed(0)
    backbone = TimmBackbone("test_resnet", image_size=16, allow_random=True)
    probe, _ = train_probe(backbone, bench.train, TrainConfig(epochs=5, lr=1e-2, batch_size=32), progress=False)
    unet = ConditionalUNet(embedding_dim=backbone.embedding_dim, sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    ae = DiffusionAutoencoder(backbone, unet, steps=2, batch_size=8)
    names = ["ColorA", "ColorB", "PositionX", "PositionY"]
    dictionary = ProcrustesDictionary(names).fit(
        ae.embed(bench.generator.float_images()), torch.stack([bench.generator.factors[f] for f in names], 1))
    explainer = DiDAE(probe, ae, dictionary).fit(bench.train.float_images())

    # CFKD on an FM probe with the DiDAE explainer: every kept counterfactual carries its factual's label.
    result = CFKD(explainer, PreclusteredTeacher(("ColorA",)), max_factuals=12, max_val_factuals=4,
                  progress=False).correct(probe, data)
    rec = result.record
    assert rec["n_counterfactuals"] == 4 * rec["n_factuals"] == sum(rec["verdicts"].values())
    cf = result.artifacts["counterfactual_dataset"]
    if cf is not None:
        src = torch.tensor([s["index"] for s in result.artifacts["sources"]])
        assert torch.equal(cf.y, bench.train.y[src]) and cf.images.shape[1:] == bench.train.images.shape[1:]
        assert all(s["atom"] != "ColorA" for s in result.artifacts["sources"])
    assert result.model.backbone is probe.backbone  # the frozen backbone is shared, not copied
    assert_json(rec)

    # Projection of an atom: as it is for the probe, carried over as a pattern for a ResNet.
    proj = Projection(dictionary=dictionary, atoms=("ColorB",), embedder=backbone)
    assert proj.correct(probe, data).record["transfer"] == "none"
    resnet = TimmClassifier("test_resnet", num_classes=2, image_size=16)
    train_classifier(resnet, bench.train, TrainConfig(epochs=2, lr=3e-3, batch_size=16, optimizer="adam"), progress=False)
    assert proj.correct(resnet, data).record["transfer"] == "pattern"

    # DFR writes a new head (with a bias) that survives save/load, for a probe and inside timm.
    dfr_probe = DFR(n_retrains=3).correct(probe, data).model
    save_classifier(dfr_probe, tmp_path / "probe")
    x = bench.test.float_images()[:6]
    assert torch.allclose(load_classifier(tmp_path / "probe", backbone=backbone)(x), dfr_probe(x), atol=1e-5)
    dfr_resnet = DFR(n_retrains=3).correct(resnet, data).model
    assert dfr_resnet.model.fc is dfr_resnet.head and dfr_resnet.head is not resnet.head
    rec = GroupDRO(config=TrainConfig(epochs=1, batch_size=32), progress=False).correct(resnet, data).record
    assert rec["trained"] == "all weights"


def test_oracle_teacher_class_count_is_read_from_a_plain_module(problem, erm):
    data, _ = problem
    student, _ = erm

    class ThreeWay(nn.Module):  # no num_classes, no head: the count comes from its output
        def forward(self, x):
            return x.mean((2, 3))

    teacher = OracleTeacher(ThreeWay())
    assert teacher.num_classes is None
    with pytest.raises(ValueError, match="teacher predicts 3 classes"):
        CFKD(FlipExplainer(student), teacher, progress=False).correct(student, data)
    assert teacher.num_classes == 3
