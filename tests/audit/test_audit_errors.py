"""Input a bias audit cannot use: one clear line each, naming what was expected and the counts."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from audit_systems import DictData, Echo, binary_case, tensor_loader
from torch.utils.data import DataLoader

from fulmen.audit import AuditError, bias_audit
from fulmen.errors import DataError, FulmenWarning

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


def test_a_group_column_missing_from_a_dict_batch():
    logits, y, groups = binary_case()
    loader = DataLoader(DictData(logits, y, groups), batch_size=50)
    with pytest.raises(AuditError, match=r"group column 'sex' is missing from the batch \(batch 0 has keys \['group', 'x', 'y'\]\)"):
        bias_audit(Echo(), loader, "sex")


def test_a_group_position_missing_from_a_tuple_batch():
    logits, y, _ = binary_case()
    with pytest.raises(AuditError, match=r"group column 2 is missing from the batch \(batch 0 is a list of 2 items\)"):
        bias_audit(Echo(), tensor_loader(logits, y), 2)


def test_misaligned_lengths_name_both_counts():
    logits, y, groups = binary_case()
    with pytest.raises(AuditError, match="misaligned lengths: groups has 150 values but the dataset has 200 samples"):
        bias_audit(Echo(), tensor_loader(logits, y), groups[:150])


def test_a_group_field_of_the_wrong_length_per_batch():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.zeros(1), "y": 0, "group": [0, 1]}  # two group values for one sample

    with pytest.raises(AuditError, match="misaligned lengths: the group column has 8 values for 4 samples"):
        bias_audit(Echo(), DataLoader(Pairs(), batch_size=2), "group")


def test_a_small_group_is_flagged_and_named_with_its_count():
    logits, y, groups = binary_case()
    groups = groups.copy()
    groups[:12] = "c"
    with pytest.warns(FulmenWarning, match=r"1 group\(s\) with fewer than min_group_size=30 samples: 'c' \(12\)"):
        result = bias_audit(Echo(), tensor_loader(logits, y), groups, bootstrap=10)
    small = {g["group"]: g["small"] for g in result["groups"]}
    assert small == {"a": False, "b": False, "c": True}
    assert [g["size"] for g in result["groups"] if g["group"] == "c"] == [12]
    assert "'c' (12)" in result["warnings"][0]


def test_no_targets_in_a_dict_batch():
    class NoTargets(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.zeros(1), "group": "a"}

    with pytest.raises(AuditError, match=r"batch 0 is a dict with keys \['group', 'x'\] and no targets: .*'y', 'target'"):
        bias_audit(Echo(), DataLoader(NoTargets(), batch_size=2), "group")


def test_no_targets_in_a_bare_tensor_batch():
    loader = DataLoader(torch.zeros(8, 1), batch_size=4)
    with pytest.raises(AuditError, match=r"batch 0 is a Tensor and no targets were found in it: a bias audit expects \(x, y, \.\.\.\)"):
        bias_audit(Echo(), loader, np.zeros(8))


def test_an_unknown_task():
    logits, y, groups = binary_case()
    with pytest.raises(AuditError, match="task='ranking' is not one of binary, multiclass, regression"):
        bias_audit(Echo(), tensor_loader(logits, y), groups, task="ranking")


def test_an_audit_error_is_a_data_error():
    assert issubclass(AuditError, DataError) and issubclass(AuditError, ValueError)


def _without_fairlearn(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys; sys.modules['fairlearn'] = None; sys.modules['fairlearn.metrics'] = None\n"
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, timeout=120)


def test_fairlearn_missing_names_the_extra():
    done = _without_fairlearn(
        "from fulmen.audit import bias_audit\n"
        "try:\n    bias_audit(None, None, 'group')\nexcept ImportError as err:\n    print(err)\n"
    )
    assert done.stdout.strip() == "the bias audit needs fairlearn, which is not installed: pip install 'fulmen[audit]'"


def test_fairlearn_missing_in_the_command(tmp_path):
    done = _without_fairlearn(
        f"from fulmen.cli import main\nsys.exit(main(['audit', {str(tmp_path)!r}, '--data', 'x:Y', '--group-by', 'g']))\n"
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "fulmen audit: the bias audit needs fairlearn, which is not installed: pip install 'fulmen[audit]'"
