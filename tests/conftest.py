import os
import sys

import pytest

# tests/helpers is importable as ``helpers`` from every test file.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """``warn_once`` remembers what it printed; each test starts with a clean slate."""
    from fulmen.errors import _reset_warn_once

    _reset_warn_once()
    yield
    _reset_warn_once()


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests run two at a time on two cores: keep torch to one thread each."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _audit_home(tmp_path_factory, monkeypatch):
    """Audit logs kept outside run folders (fulmen.lightning) go to a temporary folder, never the real home."""
    monkeypatch.setenv("FULMEN_AUDIT_HOME", str(tmp_path_factory.mktemp("audit_home")))
