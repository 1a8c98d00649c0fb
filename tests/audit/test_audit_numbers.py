"""bias_audit's numbers against hand computations on data with known rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from audit_systems import DictData, Echo, binary_case, tensor_loader
from torch.utils.data import DataLoader

from fulmen.audit import bias_audit


def _groups(result):
    return {g["group"]: g for g in result["groups"]}


def _values(result):
    return {(g["group"], g["size"], name): m["value"] for g in result["groups"] for name, m in g["metrics"].items()}


def _value(result, group, metric):
    return _groups(result)[group]["metrics"][metric]["value"]


def test_binary_rates_and_disparities_match_the_hand_computation():
    logits, y, groups = binary_case()
    result = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=50)
    assert result["task"] == "binary" and result["samples"] == 200
    # a: TP 45, FN 5, FP 10, TN 40; b: TP 30, FN 10, FP 20, TN 40
    expected = {
        "a": {"accuracy": 0.85, "selection_rate": 0.55, "false_positive_rate": 10 / 50, "false_negative_rate": 5 / 50},
        "b": {"accuracy": 0.70, "selection_rate": 0.50, "false_positive_rate": 20 / 60, "false_negative_rate": 10 / 40},
    }
    for g, metrics in expected.items():
        assert _groups(result)[g]["size"] == 100 and not _groups(result)[g]["small"]
        for name, value in metrics.items():
            assert _value(result, g, name) == pytest.approx(value), (g, name)
    d = result["disparities"]
    assert d["demographic_parity_difference"] == pytest.approx(0.05)
    assert d["demographic_parity_ratio"] == pytest.approx(0.50 / 0.55)
    # TPR a 0.9 vs b 0.75 (0.15); FPR a 0.2 vs b 1/3 (0.133): the larger
    assert d["equalized_odds_difference"] == pytest.approx(0.15)
    assert result["overall"]["accuracy"] == pytest.approx(155 / 200)
    assert result["differences"]["accuracy"] == pytest.approx(0.15)


def test_binary_calibration_from_the_logits():
    logits, y, groups = binary_case()
    result = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=0)
    s = 1 / (1 + math.exp(-3.0))  # P(positive) of a positive prediction; 1 - s of a negative one
    assert result["probabilities"] is True
    assert _value(result, "a", "mean_probability") == pytest.approx((55 * s + 45 * (1 - s)) / 100)
    assert _value(result, "a", "observed_rate") == pytest.approx(0.5)
    assert _value(result, "b", "observed_rate") == pytest.approx(0.4)
    # 85 right with error 1 - s, 15 wrong with error s
    assert _value(result, "a", "brier_score") == pytest.approx((85 * (1 - s) ** 2 + 15 * s**2) / 100)
    assert _groups(result)["a"]["metrics"]["accuracy"]["ci"] is None  # bootstrap=0: no intervals


def test_intervals_are_seeded_and_cover_the_value():
    logits, y, groups = binary_case()
    first = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=100, seed=3)
    again = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=100, seed=3)
    other = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=100, seed=4)
    for g in first["groups"]:
        for name, m in g["metrics"].items():
            lo, hi = m["ci"]
            assert lo <= m["value"] <= hi, (g["group"], name)
    assert first["groups"] == again["groups"]
    assert first["groups"] != other["groups"]
    acc = _groups(first)["a"]["metrics"]["accuracy"]["ci"]
    assert 0.7 < acc[0] < 0.85 < acc[1] < 0.95  # about 0.85 +- 2 * sqrt(0.85 * 0.15 / 100)


def test_groups_aligned_through_a_shuffling_sampler_and_as_a_batch_field():
    logits, y, groups = binary_case()
    ordered = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=0)
    torch.manual_seed(0)
    shuffled = bias_audit(Echo(), tensor_loader(logits, y, shuffle=True), groups, bootstrap=0)
    as_field = bias_audit(Echo(), DataLoader(DictData(logits, y, groups), batch_size=16, shuffle=True), "group", bootstrap=0)
    assert _values(shuffled) == pytest.approx(_values(ordered))  # the same sums, in another order
    assert _values(as_field) == pytest.approx(_values(ordered)) and as_field["group_by"] == "group"
    assert shuffled["group_by"] == "array"


def multiclass_case():
    """120 samples, groups a (0-59) and b (60-119), each with 20 samples of classes 0, 1, 2.
    a: 10 of class 2 predicted as 0. b: 5 of class 0 predicted as 1, 10 of class 1 predicted as 2."""
    y = torch.tensor(([0] * 20 + [1] * 20 + [2] * 20) * 2)
    pred = y.clone()
    pred[40:50] = 0
    pred[60:65] = 1
    pred[80:90] = 2
    logits = torch.nn.functional.one_hot(pred, 3).float() * 5.0
    return logits, y, np.array(["a"] * 60 + ["b"] * 60)


def test_multiclass_rates_one_vs_rest_and_worst_class_disparities():
    logits, y, groups = multiclass_case()
    result = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=20)
    assert result["task"] == "multiclass" and result["classes"] == [0, 1, 2]
    assert _value(result, "a", "accuracy") == pytest.approx(50 / 60)
    assert _value(result, "b", "accuracy") == pytest.approx(45 / 60)
    assert [_value(result, "a", f"selection_rate[{c}]") for c in range(3)] == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert [_value(result, "b", f"selection_rate[{c}]") for c in range(3)] == pytest.approx([0.25, 0.25, 0.5])
    # one-vs-rest macro: a FPR (10/40, 0, 0), FNR (0, 0, 10/20); b FPR (0, 5/40, 10/40), FNR (5/20, 10/20, 0)
    assert _value(result, "a", "false_positive_rate") == pytest.approx(0.25 / 3)
    assert _value(result, "a", "false_negative_rate") == pytest.approx(0.5 / 3)
    assert _value(result, "b", "false_positive_rate") == pytest.approx(0.375 / 3)
    assert _value(result, "b", "false_negative_rate") == pytest.approx(0.75 / 3)
    d = result["disparities"]
    assert d["per_class"]["0"]["demographic_parity_difference"] == pytest.approx(0.25)
    assert d["per_class"]["1"]["demographic_parity_difference"] == pytest.approx(1 / 12)
    assert d["per_class"]["2"]["demographic_parity_difference"] == pytest.approx(1 / 3)
    assert d["demographic_parity_difference"] == pytest.approx(1 / 3)
    assert [d["per_class"][c]["equalized_odds_difference"] for c in "012"] == pytest.approx([0.25, 0.5, 0.5])
    assert d["equalized_odds_difference"] == pytest.approx(0.5)
    # calibration on the predicted class: confidence softmax(5, 0, 0) against being right
    conf = math.exp(5) / (math.exp(5) + 2)
    assert _value(result, "a", "calibration_gap") == pytest.approx(conf - 50 / 60)


def test_regression_errors_per_group():
    y = torch.linspace(-2, 5, 100).unsqueeze(1)
    out = y + 1.0  # a (0-49): every error 1
    out[50::2] = y[50::2] + 3.0  # b (50-99): errors 3 and -1 alternately
    out[51::2] = y[51::2] - 1.0
    groups = ["a"] * 50 + ["b"] * 50
    result = bias_audit(Echo(), tensor_loader(out, y), groups, bootstrap=20)
    assert result["task"] == "regression" and result["classes"] == []
    assert _value(result, "a", "mae") == pytest.approx(1.0)
    assert _value(result, "a", "rmse") == pytest.approx(1.0)
    assert _value(result, "b", "mae") == pytest.approx(2.0)
    assert _value(result, "b", "rmse") == pytest.approx(math.sqrt(5.0))
    assert result["disparities"] == pytest.approx({"mae_difference": 1.0, "rmse_difference": math.sqrt(5.0) - 1})


def test_task_given_overrides_the_inference():
    logits, y, groups = binary_case()
    as_regression = bias_audit(Echo(), tensor_loader(logits, y.float().unsqueeze(1)), groups, task="regression", bootstrap=0)
    assert as_regression["task"] == "regression"
    assert bias_audit(Echo(), tensor_loader(logits, y.float()), groups, bootstrap=0)["task"] == "binary"


def test_predict_step_returning_labels_is_used_and_has_no_calibration():
    class Labels(Echo):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return batch[0].argmax(dim=1)  # class labels, not scores

    logits, y, groups = multiclass_case()
    result = bias_audit(Labels(), tensor_loader(logits, y), groups, bootstrap=0)
    assert result["task"] == "multiclass" and result["probabilities"] is False
    assert result["notes"] == ["outputs are labels: no calibration"]
    assert _value(result, "b", "accuracy") == pytest.approx(45 / 60)
    assert "calibration_gap" not in _groups(result)["a"]["metrics"]


def test_one_hot_targets_are_read_as_class_indices():
    logits, y, groups = multiclass_case()
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    result = bias_audit(Echo(), tensor_loader(logits, one_hot), groups, bootstrap=0)
    assert result["task"] == "multiclass"
    assert _value(result, "a", "accuracy") == pytest.approx(50 / 60)
    as_regression = bias_audit(Echo(), tensor_loader(logits, one_hot), groups, task="regression", bootstrap=0)
    assert as_regression["task"] == "regression"
