"""`didae-xai compare` end to end (preset smoke, through Typer's runner), caching, resume and the store."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from didae_xai.benchmark import compare as compare_module
from didae_xai.benchmark.compare import CORRECTORS, EXPLAINERS, STUDENTS
from didae_xai.benchmark.store import ArtifactStore, config_hash
from didae_xai.cli import app

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One cold smoke run shared by the tests below: (store, out folder, results)."""
    root = tmp_path_factory.mktemp("compare")
    store, out = root / "store", root / "run1"
    result = invoke("compare", "--preset", "smoke", "--out", str(out), "--store", str(store))
    assert result.exit_code == 0, result.output
    return store, out, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_every_figure_of_the_contract(smoke):
    store, out, results = smoke
    for name in EXPLAINERS:
        row = results["explainers"][name]
        assert 0.0 <= row["flip_rate"] <= 1.0 and 0.0 <= row["nafr"] <= row["flip_rate"] + 1e-9
        assert row["cf_per_s"] > 0
    assert results["explainers"]["dime"]["factuals"] == 2 and results["explainers"]["didae_svd"]["factuals"] == 8
    assert set(results["explainers"]["didae_procrustes"]["by_student"]) == set(STUDENTS)
    for student in STUDENTS:
        for name in CORRECTORS:
            row = results["correctors"][student][name]
            assert 0.0 <= row["wga"] <= row["aga"] <= 1.0
            assert set(row["group_accuracy"]) and row["labels_used"]
        # ERM is the uncorrected student: zero gain by definition.
        assert results["correctors"][student]["erm"]["gain"] == pytest.approx(0.0, abs=1e-9)
        assert results["correctors"][student]["erm"]["aga"] == pytest.approx(results["students"][student]["aga"])
    assert results["correctors"]["probe"]["groupdro"]["labels_used"] == ["y", "group"]
    cfkd = results["correctors"]["probe"]["didae_cfkd_oracle"]["cfkd"]
    assert sum(cfkd["verdicts"].values()) == cfkd["n_counterfactuals"]  # every counterfactual was judged
    assert sum(cfkd["train_counterfactuals_by_atom"].values()) == cfkd["n_train_counterfactuals"]
    assert results["config"]["preset"]["name"] == "smoke" and results["config"]["seed"] == 0
    assert results["versions"]["torch"] == torch.__version__
    assert results["device"] == "cpu" and results["threads"] >= 1 and results["minutes"]["total"] > 0
    assert not any(m["cached"] for m in results["models"].values())

    report = (out / "report.md").read_text()
    assert "| Procrustes-DiDAE | 8 |" in report and "paper NAFR %" in report and "paper Gain %" in report
    assert "DiME 2, FastDiME 4, ACE 4" in report  # the report says how many factuals the slow methods saw
    for figure in results["figures"]:
        assert (out / figure).read_bytes()[:8] == PNG
        assert f"]({figure})" in report
    names = {p.name for p in (out / "figures").iterdir()}
    assert {"cf_per_s.png", "group_accuracies_probe.png", "group_accuracies_resnet.png"} <= names
    assert {f"counterfactuals_{n}.png" for n in EXPLAINERS} <= names
    # DiME/FastDiME: the published scales in smoke, the cumulative flip rate after each in the row and the report.
    for name in ("dime", "fastdime"):
        row = results["explainers"][name]
        assert row["settings"]["scales"] == [8.0, 10.0, 15.0]
        by_scale = list(row["flip_rate_by_scale"].values())
        assert list(row["flip_rate_by_scale"]) == ["8", "10", "15"] and by_scale == sorted(by_scale)
        assert by_scale[-1] == pytest.approx(row["flip_rate"])
    assert "flip rate reached by each scale: DiME 8 →" in report


def test_guidance_scales_option_reaches_the_baselines_and_the_report(smoke, tmp_path):
    store, first, _ = smoke
    out = tmp_path / "scales"
    shutil.copytree(first, out)  # a finished run: only the steps that read the scales may run again
    result = invoke("compare", "--preset", "smoke", "--out", str(out), "--store", str(store),
                    "--explainers", "didae_procrustes,fastdime", "--correctors", "erm", "--guidance-scales", "8,10,15,20")
    assert result.exit_code == 0, result.output
    assert "explaining the resnet student with fastdime" in result.output
    assert "resumed explain__resnet__didae_procrustes" in result.output and "resumed correct__probe__erm" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["preset"]["guidance_scales"] == [8.0, 10.0, 15.0, 20.0]
    assert results["explainers"]["fastdime"]["settings"]["scales"] == [8.0, 10.0, 15.0, 20.0]
    assert list(results["explainers"]["fastdime"]["flip_rate_by_scale"]) == ["8", "10", "15", "20"]
    assert "--guidance-scales 8,10,15,20" in (out / "report.md").read_text()  # the reproduce line keeps them


def test_second_run_reuses_the_store(smoke, tmp_path):
    store, out, first = smoke
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*.safetensors")}
    result = invoke("compare", "--preset", "smoke", "--out", str(tmp_path / "run2"), "--store", str(store),
                    "--explainers", "didae_procrustes", "--correctors", "erm,dfr")
    assert result.exit_code == 0, result.output
    second = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert all(m["cached"] for m in second["models"].values())
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*.safetensors")} == stamps  # nothing retrained
    assert "reused" in result.output
    # Same models, same factuals: DiDAE is deterministic.
    assert second["explainers"]["didae_procrustes"]["flip_rate"] == first["explainers"]["didae_procrustes"]["flip_rate"]
    assert second["correctors"]["resnet"]["dfr"]["aga"] == pytest.approx(first["correctors"]["resnet"]["dfr"]["aga"])


def test_interrupted_run_resumes_at_the_step_it_was_in(smoke, tmp_path, monkeypatch):
    store, _, _ = smoke
    out = tmp_path / "run"
    args = ("compare", "--preset", "smoke", "--out", str(out), "--store", str(store), "--students", "probe",
            "--explainers", "didae_procrustes,didae_svd", "--correctors", "erm,didae_projection,dfr")
    calls = {"explain": 0, "correct": 0}
    real_explain, real_correct = compare_module.explain_step, compare_module.correct_step

    def explain(*a, **k):
        calls["explain"] += 1
        return real_explain(*a, **k)

    def correct_then_crash(*a, **k):
        calls["correct"] += 1
        if calls["correct"] == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the second corrector
        return real_correct(*a, **k)

    monkeypatch.setattr(compare_module, "explain_step", explain)
    monkeypatch.setattr(compare_module, "correct_step", correct_then_crash)
    interrupted = runner.invoke(app, list(args))  # Click turns Ctrl-C into "Aborted!", exit code 1
    assert interrupted.exit_code != 0
    assert not (out / "results.json").exists()
    assert sorted(p.name for p in (out / "steps").iterdir()) == [
        "correct__probe__erm.json", "explain__probe__didae_procrustes.json", "explain__probe__didae_svd.json"]

    calls.update(explain=0, correct=0)
    monkeypatch.setattr(compare_module, "correct_step", lambda *a, **k: (calls.__setitem__("correct", calls["correct"] + 1),
                                                                         real_correct(*a, **k))[1])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert calls == {"explain": 0, "correct": 2}  # only didae_projection and dfr were left
    results = json.loads((out / "results.json").read_text())
    assert list(results["correctors"]["probe"]) == ["erm", "didae_projection", "dfr"]


def test_report_rerenders_from_results(smoke, tmp_path):
    _, out, results = smoke
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text(json.dumps(results))
    result = invoke("report", str(copy))
    assert result.exit_code == 0, result.output
    assert "Correctors on the probe student" in (copy / "report.md").read_text()
    assert (copy / "figures" / "cf_per_s.png").read_bytes()[:8] == PNG
    assert invoke("report", str(tmp_path / "nothing")).exit_code == 2


def test_explain_command_writes_a_grid(smoke, tmp_path):
    from PIL import Image

    from didae_xai.data.square import square_dataset

    store, _, _ = smoke
    images = square_dataset(2, size=32, seed=5).images
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"square{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    result = invoke("explain", *map(str, paths), "--preset", "smoke", "--store", str(store), "--out", str(tmp_path / "exp"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exp" / "grid.png").read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "exp" / "explanation" / "explanation.json").read_text())
    assert len(saved["flipped"]) == 2 and len(saved["flipped"][0]) == 4  # 2 images x 4 atoms


@pytest.mark.parametrize(
    "args, message",
    [
        (("--explainers", "didae,lime"), "unknown explainer 'didae', 'lime'"),
        (("--correctors", "jtt"), "known: erm, didae_cfkd_preclustered"),
        (("--preset", "huge"), "choose one of: smoke, tiny, quick, paper"),
        (("--preset", "paper", "--device", "cpu"), "sized for a GPU"),
        (("--dataset", "celeba"), "--data-root"),
        (("--dataset", "metadata_csv", "--data-root", "/no/such/folder"), "does not exist"),
        (("--students", "probe", "--explain-student", "resnet"), "not among the students"),
        (("--guidance-scales", "8,ten"), "comma-separated distinct positive numbers"),
        (("--guidance-scales", "8,-1"), "comma-separated distinct positive numbers"),
        (("--guidance-scales", "8,8"), "comma-separated distinct positive numbers"),
        (("--guidance-scales", "8,nan"), "comma-separated distinct positive numbers"),
        (("--guidance-scales", ""), "comma-separated distinct positive numbers"),
    ],
)
def test_clear_errors(args, message, tmp_path):
    result = invoke("compare", "--out", str(tmp_path), "--store", str(tmp_path / "store"), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())  # rich may wrap it in a box


def test_help_explains_every_option():
    result = invoke("compare", "--help")
    text = " ".join(result.output.split())
    for option in ("--preset", "--dataset", "--data-root", "--explainers", "--correctors", "--students", "--out",
                   "--seed", "--device", "--force", "--store", "--guidance-scales", "--max-shift"):
        assert option in text


# ---------------------------------------------------------------------------------------- the store
def test_store_builds_once_and_resumes_an_interrupted_build(tmp_path):
    store = ArtifactStore(tmp_path)
    builds = []

    def build(folder):
        builds.append(folder)
        checkpoint = folder / "checkpoint.txt"
        done = int(checkpoint.read_text()) if checkpoint.exists() else 0
        for step in range(done, 4):
            checkpoint.write_text(str(step + 1))
            if len(builds) == 1 and step == 1:
                raise KeyboardInterrupt
        (folder / "model.txt").write_text("trained")
        return {"steps_resumed_from": done}

    with pytest.raises(KeyboardInterrupt):
        store.get_or_build("fm", {"epochs": 4}, build)
    key = store.key("fm", {"epochs": 4})
    assert not store.path("fm", key).exists()  # an interrupted build never looks finished
    entry = store.get_or_build("fm", {"epochs": 4}, build)
    assert not entry.cached and entry.meta["steps_resumed_from"] == 2 and (entry.path / "model.txt").is_file()
    again = store.get_or_build("fm", {"epochs": 4}, build)
    assert again.cached and again.path == entry.path and len(builds) == 2
    # Another config or another upstream artifact is another entry.
    assert store.key("fm", {"epochs": 5}) != key and store.key("fm", {"epochs": 4}, deps=("abc",)) != key


def test_force_rebuilds_once_per_run(tmp_path):
    calls = []
    ArtifactStore(tmp_path).get_or_build("ae", {"a": 1}, lambda f: calls.append(1))
    forced = ArtifactStore(tmp_path, force=True)
    assert not forced.get_or_build("ae", {"a": 1}, lambda f: calls.append(1)).cached
    assert forced.get_or_build("ae", {"a": 1}, lambda f: calls.append(1)).cached  # not twice in one run
    assert len(calls) == 2


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_explanation_memo_explains_each_batch_once():
    from didae_xai.benchmark.compare import ExplanationMemo

    class Counting:
        calls = 0
        probe = "kept"

        def explain(self, x, target=None):
            Counting.calls += 1
            return x * 2

    memo = ExplanationMemo(Counting())
    x = torch.rand(3, 3, 4, 4)
    assert memo.explain(x) is memo.explain(x.clone())  # same pixels: one call, the same explanation
    assert torch.equal(memo.explain(x + 1), (x + 1) * 2) and Counting.calls == 2
    assert memo.probe == "kept"  # everything else is the explainer's


def test_step_cache_resumes_unless_forced(tmp_path):
    from didae_xai.benchmark.compare import StepCache

    runs = []
    compute = lambda: runs.append(1) or {"value": len(runs)}  # noqa: E731
    assert StepCache(tmp_path).run("s", {"a": 1}, compute, print) == {"value": 1}
    assert StepCache(tmp_path).run("s", {"a": 1}, compute, print) == {"value": 1}  # resumed
    assert StepCache(tmp_path).run("s", {"a": 2}, compute, print) == {"value": 2}  # another config
    assert StepCache(tmp_path, force=True).run("s", {"a": 2}, compute, print) == {"value": 3}


def test_make_corrector_builds_every_corrector_by_name():
    from types import SimpleNamespace

    from didae_xai.benchmark.compare import AtomPlan, make_corrector
    from didae_xai.correct import CFKD, OracleTeacher, PreclusteredTeacher, Projection
    from didae_xai.dictionary import ProcrustesDictionary

    plan = AtomPlan(("ColorA", "ColorB"), task="ColorA", confounder="ColorB")
    explainer = SimpleNamespace(explain=lambda images, target=None: None)
    z, attributes = torch.randn(64, 6), torch.rand(64, 2)
    dictionary = ProcrustesDictionary(names=list(plan.attributes)).fit(z, attributes)
    teacher = torch.nn.Linear(2, 2)
    built = {name: make_corrector(name, explainer, dictionary, plan, teacher=teacher, max_factuals=7) for name in CORRECTORS}
    assert [type(c).__name__ for c in built.values()] == ["ERM", "CFKD", "CFKD", "Projection", "PClarc", "AClarc",
                                                          "RRClarc", "GroupDRO", "DFR"]
    assert isinstance(built["didae_cfkd_preclustered"].teacher, PreclusteredTeacher)
    assert isinstance(built["didae_cfkd_oracle"].teacher, OracleTeacher)
    assert isinstance(built["didae_cfkd_oracle"], CFKD) and built["didae_cfkd_oracle"].max_factuals == 7
    assert isinstance(built["didae_projection"], Projection)
    with pytest.raises(ValueError, match="needs the teacher"):
        make_corrector("didae_cfkd_oracle", explainer, dictionary, plan)
    with pytest.raises(ValueError, match="Unknown corrector 'jtt'"):
        make_corrector("jtt", explainer, dictionary, plan)
