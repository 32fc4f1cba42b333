"""The reference lifecycle on Palmer Penguins, end to end, and the evaluate stage's metric definitions.

The pipeline test follows the README: copy stages/, pipelines/ and conf/ into a fresh git workspace (temp HOME and
CERTUS_HOME), `python stages/bootstrap.py`, `certus repro`, then checks metrics/eval.json's shape (policy gates
read it by dotted path, so its names are fixed here), that the run verifies, that evaluate is deterministic and
that `evaluate.fairness_attribute=island` and `model=gbt` re-evaluate as they should.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

import _metrics  # noqa: E402  (stages/ is not a package: the stage scripts import it this way too)

# metrics/eval.json's shape: every key, nothing more (values are examples)
SHAPE: dict[str, Any] = {
    "accuracy": 0.97, "f1_macro": 0.96, "n_test": 100,
    "calibration": {"brier": 0.05, "ece": 0.03, "ece_bins": 10, "ece_strategy": "uniform"},
    "fairness": {"attribute": "sex", "dp_difference": 0.04, "eo_difference": 0.08,
                 "per_group_accuracy": {"female": 0.98, "male": 0.96}, "worst_group_gap": 0.02,
                 "ci": {"dp_difference": [0.01, 0.09], "eo_difference": [0.02, 0.15], "worst_group_gap": [0.0, 0.06],
                        "level": 0.95, "resamples": 500, "seed": 0},
                 "group_sizes": {"female": 50, "male": 50}},
}
GROUP_KEYED = ("per_group_accuracy", "group_sizes")


def assert_shape(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), path
        if path.rsplit(".", 1)[-1] in GROUP_KEYED:
            assert got and all(isinstance(k, str) for k in got), path
            for v in got.values():
                assert_shape(v, next(iter(want.values())), path + ".*")
            return
        assert sorted(got) == sorted(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_shape(got[k], want[k], f"{path}.{k}".lstrip("."))
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for g in got:
            assert isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g), path
    elif isinstance(want, str):
        assert isinstance(got, str), path
    elif isinstance(want, int):
        assert type(got) is int, path
    else:
        assert isinstance(got, (int, float)) and not isinstance(got, bool) and math.isfinite(got), path
        assert got == round(got, 6), f"{path}: {got} not rounded to 6 digits"


def check_eval(ev: dict[str, Any], attribute: str, groups: set[str]) -> None:
    assert_shape(ev, SHAPE)
    assert ev["accuracy"] > 0.9 and ev["f1_macro"] > 0.9
    cal, fair = ev["calibration"], ev["fairness"]
    assert 0 <= cal["ece"] <= 1 and 0 <= cal["brier"] <= 2
    assert (cal["ece_bins"], cal["ece_strategy"]) == (10, "uniform")
    assert fair["attribute"] == attribute
    assert set(fair["per_group_accuracy"]) == set(fair["group_sizes"]) == groups
    assert sum(fair["group_sizes"].values()) == ev["n_test"]
    accs = fair["per_group_accuracy"].values()
    assert fair["worst_group_gap"] == pytest.approx(max(accs) - min(accs), abs=2e-6)
    for name in ("dp_difference", "eo_difference", "worst_group_gap"):
        lo, hi = fair["ci"][name]
        assert 0 <= lo <= fair[name] <= hi <= 1, (name, fair[name], fair["ci"][name])
    assert (fair["ci"]["level"], fair["ci"]["resamples"], fair["ci"]["seed"]) == (0.95, 500, 0)


@pytest.mark.integration
def test_penguins_lifecycle_end_to_end(ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for d in ("conf", "pipelines", "stages"):
        shutil.copytree(REPO / d, ws.root / d, ignore=shutil.ignore_patterns("__pycache__"))
    (ws.root / "step.py").unlink()
    monkeypatch.setenv("CERTUS_HOME", str(tmp_path / "certus_home"))
    ws.commit("reference lifecycle")
    boot = subprocess.run([sys.executable, "stages/bootstrap.py"], cwd=ws.root, capture_output=True, text=True,
                          timeout=300)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    raw = (ws.root / "data/raw/penguins.csv").read_text(encoding="utf-8").splitlines()
    assert len(raw) == 345 and raw[0].startswith("studyName,Sample Number,Species,Region,Island,")
    assert ",NA," not in "\n".join(raw)  # the package's NA cells are empty cells, still missing
    ws.commit("governance: trust.json, the raw dataset's manifest and approval")

    assert ws.certus("repro") == 0
    # the pipeline's last step packaged and released the gated model (README: package -> verify -> deploy)
    assert ws.certus("bundle", "verify", "dist/penguin-classifier-1.0.0") == 0
    curate = json.loads(ws.read("metrics/curate.json"))
    assert (curate["rows_in"], curate["rows_out"]) == (344, 333)
    assert curate["missing"] == {"strategy": "drop", "rows_dropped": 11, "by_column": {
        "bill_depth_mm": 2, "bill_length_mm": 2, "body_mass_g": 2, "flipper_length_mm": 2, "island": 0, "sex": 11}}
    assert curate["label_map"] == {"Adelie": 0, "Chinstrap": 1, "Gentoo": 2}
    assert ws.read("data/curated/penguins.csv").splitlines()[0] == (
        "island,sex,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,label")
    by_sex = json.loads(ws.read("metrics/eval.json"))
    check_eval(by_sex, "sex", {"female", "male"})
    capsys.readouterr()
    assert ws.certus("status") == 0
    cap = capsys.readouterr()
    assert "Everything is up to date." in cap.out + cap.err
    assert ws.certus("verify", "--artifacts") == 0, capsys.readouterr()
    capsys.readouterr()

    # same inputs, same bytes
    assert ws.certus("repro", "--check-determinism", "evaluate") == 0
    cap = capsys.readouterr()
    assert "stage 'evaluate' is deterministic" in cap.out + cap.err

    # the fairness attribute is a param: only evaluate re-runs, and the fairness block follows it
    assert ws.certus("repro", "evaluate.fairness_attribute=island") == 0
    cap = capsys.readouterr()
    assert "ran 1, restored 0, up to date 3" in cap.out + cap.err
    by_island = json.loads(ws.read("metrics/eval.json"))
    check_eval(by_island, "island", {"Biscoe", "Dream", "Torgersen"})
    assert by_island["fairness"] != by_sex["fairness"]
    assert {k: v for k, v in by_island.items() if k != "fairness"} == {
        k: v for k, v in by_sex.items() if k != "fairness"}

    # the other model config trains and evaluates too (its intervals are not degenerate)
    assert ws.certus("repro", "model=gbt") != 0  # packaging refuses to reuse version 1.0.0 for another model
    assert "a version is never reused: bump it" in capsys.readouterr().err
    assert ws.certus("repro", "model=gbt", "package.version=1.1.0") == 0
    assert (ws.root / "dist/penguin-classifier-1.1.0/model.sig").is_file()
    gbt = json.loads(ws.read("metrics/eval.json"))
    check_eval(gbt, "sex", {"female", "male"})
    assert gbt != by_sex
    assert ws.certus("verify") == 0, capsys.readouterr()


# -- metric definitions -----------------------------------------------------------------------------------------


def test_ece_matches_a_hand_computed_example() -> None:
    # 10 equal-width bins: (0.9, 1] holds 0.95 (right) and 0.92 (wrong): |0.5 - 0.935| * 2/5 = 0.174;
    # (0.7, 0.8] holds 0.75 and 0.72, both right: |1 - 0.735| * 2/5 = 0.106; (0.3, 0.4] holds 0.35, wrong: 0.07
    conf = [0.95, 0.92, 0.75, 0.72, 0.35]
    correct = [True, False, True, True, False]
    assert _metrics.ece_top_label(conf, correct, 10) == pytest.approx(0.35, abs=1e-12)
    # one bin: |accuracy - mean confidence| overall
    assert _metrics.ece_top_label(conf, correct, 1) == pytest.approx(abs(0.6 - 0.738), abs=1e-12)
    # bins are right-closed: 0.5 falls in (0, 0.5] with 2 bins -> |0 - 0.5|/2 + |1 - 0.9|/2
    assert _metrics.ece_top_label([0.5, 0.9], [False, True], 2) == pytest.approx(0.3, abs=1e-12)
    # perfectly calibrated: confidence 0.75 and three of four right
    assert _metrics.ece_top_label([0.75] * 4, [True, True, True, False], 10) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        _metrics.ece_top_label([1.5], [True], 10)


def test_ece_uses_the_top_label_confidence() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.45, 0.15]])
    pred, conf = _metrics.top_label(proba, [0, 1, 2])
    assert pred.tolist() == [0, 2, 1] and conf.tolist() == [0.7, 0.6, 0.45]
    y = np.array([0, 1, 1])  # right, wrong, right
    # bins (0.6, 0.7]: 0.7 right -> 0.3/3; (0.5, 0.6]: 0.6 wrong -> 0.6/3; (0.4, 0.5]: 0.45 right -> 0.55/3
    assert _metrics.ece_top_label(conf, pred == y, 10) == pytest.approx((0.3 + 0.6 + 0.55) / 3, abs=1e-12)


def test_brier_score_known_values() -> None:
    classes = [0, 1, 2]
    y = np.array([0, 1, 2, 1])
    assert _metrics.brier_multiclass(y, np.eye(3)[y], classes) == 0.0  # perfect
    assert _metrics.brier_multiclass(y, np.eye(3)[(y + 1) % 3], classes) == pytest.approx(2.0)  # confidently wrong
    # uniform 1/3: (2/3)^2 + 2 * (1/3)^2 = 2/3 per sample
    assert _metrics.brier_multiclass(y, np.full((4, 3), 1 / 3), classes) == pytest.approx(2 / 3, abs=1e-12)
    # one sample, truth 0, p = (0.5, 0.3, 0.2): 0.25 + 0.09 + 0.04
    assert _metrics.brier_multiclass([0], np.array([[0.5, 0.3, 0.2]]), classes) == pytest.approx(0.38, abs=1e-12)
    # K times the mean of the one-vs-rest (binary) Brier scores
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([1, 1, 1], size=50)
    y = rng.integers(0, 3, size=50)
    ovr = np.mean([np.mean((proba[:, k] - (y == k)) ** 2) for k in classes])
    assert _metrics.brier_multiclass(y, proba, classes) == pytest.approx(3 * ovr, abs=1e-12)


def test_brier_matches_scikit_learn_multiclass_where_supported() -> None:
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(2)
    proba = rng.dirichlet([1, 1, 1], size=40)
    y = rng.integers(0, 3, size=40)
    try:
        expected = brier_score_loss(y, proba, labels=[0, 1, 2])
    except (TypeError, ValueError):
        pytest.skip("this scikit-learn has no multiclass brier_score_loss (added in 1.7)")
    assert _metrics.brier_multiclass(y, proba, [0, 1, 2]) == pytest.approx(expected, abs=1e-12)


def test_fairness_numpy_matches_fairlearn_and_skips_undefined_rates() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 60
        y = rng.integers(0, 3, size=n)
        pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, 3, size=n))
        names = np.array(["a", "b", "c"])
        groups = names[rng.integers(0, 3, size=n)]
        fair = _metrics.fairness_fairlearn(y, pred, groups, [0, 1, 2])
        gidx = np.searchsorted(names, groups)
        dp, eo, gap = (float(v[0]) for v in _metrics.fairness_numpy(y, pred, gidx, 3, [0, 1, 2]))
        assert (dp, eo, gap) == pytest.approx(
            (fair["dp_difference"], fair["eo_difference"], fair["worst_group_gap"]), abs=1e-12)
    # class 1 only in group "a", class 2 only in "b" (as Gentoo only on Biscoe): a perfect classifier has no
    # equalized-odds gap (fairlearn's own rate functions would call the missing species' TPR 0 and report 1)
    y = np.array([0, 1, 1, 0, 2, 2])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    fair = _metrics.fairness_fairlearn(y, y, groups, [0, 1, 2])
    assert fair["eo_difference"] == 0.0 and fair["worst_group_gap"] == 0.0
    assert fair["dp_difference"] == pytest.approx(2 / 3)  # class 1 predicted for 2/3 of a, none of b


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=80)
    pred = np.where(rng.random(80) < 0.85, y, rng.integers(0, 3, size=80))
    gidx = rng.integers(0, 2, size=80)
    a = _metrics.bootstrap_fairness(y, pred, gidx, 2, [0, 1, 2], resamples=200, seed=0, level=0.95)
    b = _metrics.bootstrap_fairness(y, pred, gidx, 2, [0, 1, 2], resamples=200, seed=0, level=0.95)
    c = _metrics.bootstrap_fairness(y, pred, gidx, 2, [0, 1, 2], resamples=200, seed=1, level=0.95)
    assert a == b and a != c
    narrow = _metrics.bootstrap_fairness(y, pred, gidx, 2, [0, 1, 2], resamples=200, seed=0, level=0.5)
    for k, (lo, hi) in a.items():
        assert 0 <= lo <= narrow[k][0] <= narrow[k][1] <= hi <= 1
