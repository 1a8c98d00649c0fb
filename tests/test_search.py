"""fulmen.search: PruningCallback, run_study and suggest (Optuna)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from helpers.systems import TinyData, TinySystem, quiet_trainer  # noqa: E402

import fulmen  # noqa: E402
from fulmen.search import DEFAULT_STORAGE_FILE, PruningCallback, run_study, suggest  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: Any, trial: Any) -> bool:
        return True


class ValLosses(fulmen.Callback):
    monitors = True

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: Any, system: Any) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val_loss"]))


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Any:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


# -- PruningCallback ---------------------------------------------------------------------------------
def test_pruning_callback_reports_every_validation(tmp_path: Path) -> None:
    study = optuna.create_study(storage=_sqlite(tmp_path), study_name="s", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    pruning, seen = PruningCallback(trial), ValLosses()
    # the sanity check runs too, and is not reported
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[pruning, seen])
    trainer.fit(TinySystem(), datamodule=TinyData())
    study.tell(trial, seen.values[-1])

    assert not pruning.pruned and trainer.current_epoch == 3
    (stored,) = optuna.load_study(study_name="s", storage=_sqlite(tmp_path)).trials
    assert stored.intermediate_values == pytest.approx(dict(enumerate(seen.values)))
    assert sorted(stored.intermediate_values) == [0, 1, 2]


def test_pruning_callback_reports_by_global_step(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, val_check_interval=0.5, callbacks=[PruningCallback(trial, step="global_step")]
    )
    trainer.fit(TinySystem(), datamodule=TinyData())  # 8 batches per epoch: validation every 4 steps
    assert sorted(study.trials[0].intermediate_values) == [4, 8, 12, 16]


def test_pruning_callback_warns_when_epoch_repeats(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    trainer = quiet_trainer(tmp_path, max_epochs=1, val_check_interval=0.5, callbacks=[PruningCallback(trial)])
    with pytest.warns(fulmen.FulmenWarning, match="step='global_step'"):
        trainer.fit(TinySystem(), datamodule=TinyData())
    assert sorted(study.trials[0].intermediate_values) == [0]


def test_pruning_stops_training_cleanly_and_marks_the_trial(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=AlwaysPrune())
    trial = study.ask()
    pruning = PruningCallback(trial)
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[pruning], enable_checkpointing=True)
    trainer.fit(TinySystem(), datamodule=TinyData())

    # fit ended the normal way after the first epoch: run finished, checkpoint and logs written
    assert pruning.pruned and pruning.pruned_step == 0
    assert trainer.current_epoch == 1 and trainer.state.status == "finished"
    assert trainer.checkpoint_callback.last_model_path and os.path.isfile(trainer.checkpoint_callback.last_model_path)
    assert os.path.isfile(os.path.join(trainer.log_dir, "metrics.csv"))
    with pytest.raises(optuna.TrialPruned, match="val_loss"):
        pruning.check_pruned()


def test_run_study_marks_pruned_trials(tmp_path: Path) -> None:
    epochs: list[int] = []

    def objective(trial: Any) -> float:
        lr = trial.suggest_float("lr", 0.01, 0.1, log=True)
        trainer = quiet_trainer(tmp_path, max_epochs=4, logger=False, callbacks=[PruningCallback(trial)])
        trainer.fit(TinySystem(lr=lr), datamodule=TinyData())
        epochs.append(trainer.current_epoch)
        return float(trainer.callback_metrics["val_loss"])  # returned, yet the trial is pruned

    study = run_study(objective, n_trials=2, storage_dir=tmp_path, pruner=AlwaysPrune(), seed=0)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert epochs == [1, 1]
    assert all(sorted(t.intermediate_values) == [0] for t in study.trials)


def test_missing_metric_names_the_available_ones(tmp_path: Path) -> None:
    trial = optuna.create_study().ask()
    trainer = quiet_trainer(tmp_path, callbacks=[PruningCallback(trial, monitor="val_los")])
    with pytest.raises(RuntimeError, match=r"no metric 'val_los'.*available metrics: \[.*'val_loss'.*Did you mean 'val_loss'"):
        trainer.fit(TinySystem(), datamodule=TinyData())


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="monitor"):
        PruningCallback(None, monitor="")
    with pytest.raises(ValueError, match="step"):
        PruningCallback(None, step="batch")


def test_trial_none_is_refused_on_rank_zero(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, callbacks=[PruningCallback(None)])
    with pytest.raises(ValueError, match="trial=None"):
        trainer.fit(TinySystem(), datamodule=TinyData())


class _Trial:
    def __init__(self, prune: bool) -> None:
        self.prune, self.reports = prune, []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.prune


def _fake_trainer(rank: int, rank_zero_decision: bool) -> Any:
    broadcasts: list[Any] = []

    def broadcast(obj: Any, src: int = 0) -> Any:
        broadcasts.append(obj)
        return obj if rank == 0 else rank_zero_decision

    return SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(stage="fit"),
        fast_dev_run=0,
        is_global_zero=rank == 0,
        current_epoch=2,
        global_step=30,
        callback_metrics={"val_loss": 0.5},
        strategy=SimpleNamespace(broadcast=broadcast),
        should_stop=False,
        broadcasts=broadcasts,
    )


def test_rank_zero_reports_and_decides_for_all() -> None:
    zero = _fake_trainer(rank=0, rank_zero_decision=True)
    trial = _Trial(prune=True)
    cb = PruningCallback(trial)
    cb.on_validation_end(zero, None)  # type: ignore[arg-type]
    assert trial.reports == [(2, 0.5)] and zero.broadcasts == [True] and zero.should_stop and cb.pruned

    # another rank: never touches its trial (None here), takes rank zero's decision
    other = _fake_trainer(rank=1, rank_zero_decision=True)
    cb1 = PruningCallback(None)
    cb1.on_validation_end(other, None)  # type: ignore[arg-type]
    assert other.broadcasts == [False] and other.should_stop and cb1.pruned
    with pytest.raises(optuna.TrialPruned):
        cb1.check_pruned()

    keep = _fake_trainer(rank=1, rank_zero_decision=False)
    unused = _Trial(prune=True)
    cb2 = PruningCallback(unused)  # type: ignore[arg-type]
    cb2.on_validation_end(keep, None)  # type: ignore[arg-type]
    assert not keep.should_stop and not cb2.pruned and unused.reports == []


# -- run_study -----------------------------------------------------------------------------------------
def test_run_study_default_storage_is_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = run_study(lambda t: (t.suggest_float("x", -5, 5) - 2) ** 2, n_trials=3, seed=0)
    assert (tmp_path / DEFAULT_STORAGE_FILE).is_file() and study.study_name == "fulmen"
    # a second call continues the stored study
    again = run_study(lambda t: (t.suggest_float("x", -5, 5) - 2) ** 2, n_trials=2, seed=1)
    assert len(again.trials) == 5
    stored = optuna.load_study(study_name="fulmen", storage=f"sqlite:///{tmp_path / DEFAULT_STORAGE_FILE}")
    assert len(stored.trials) == 5


def test_run_study_seed_makes_the_sampler_reproducible(tmp_path: Path) -> None:
    def objective(t: Any) -> float:
        return (t.suggest_float("x", -5, 5) - 2) ** 2

    a = run_study(objective, 4, storage=_sqlite(tmp_path), study_name="a", seed=3)
    b = run_study(objective, 4, storage="sqlite:///" + str(tmp_path / "other.db"), study_name="b", seed=3)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_run_study_argument_checks(tmp_path: Path) -> None:
    def objective(t: Any) -> float:
        return 0.0

    with pytest.raises(ValueError, match="sampler"):
        run_study(objective, 1, storage_dir=tmp_path, sampler=optuna.samplers.RandomSampler(), seed=0)
    with pytest.raises(ValueError, match="storage"):
        run_study(objective, 1, storage=_sqlite(tmp_path), storage_dir=tmp_path)
    with pytest.raises(ValueError, match="n_trials"):
        run_study(objective, None, storage_dir=tmp_path)
    with pytest.raises(ValueError, match="direction"):
        run_study(objective, 1, storage_dir=tmp_path, direction="min")
    run_study(objective, 1, storage_dir=tmp_path, study_name="d")
    with pytest.raises(ValueError, match="created with direction='minimize'"):
        run_study(objective, 1, storage_dir=tmp_path, study_name="d", direction="maximize")


def test_run_study_propagates_objective_errors(tmp_path: Path) -> None:
    def objective(t: Any) -> float:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_study(objective, 1, storage_dir=tmp_path)
    study = optuna.load_study(study_name="fulmen", storage=f"sqlite:///{tmp_path / DEFAULT_STORAGE_FILE}")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import optuna
    from fulmen.search import run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        time.sleep(0.05)  # let the two processes interleave
        return (trial.suggest_float("x", -5, 5) - 2) ** 2

    run_study(objective, n_trials=4, study_name="shared", storage_dir=sys.argv[1], seed=int(sys.argv[2]))
    """
)


def test_two_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / DEFAULT_STORAGE_FILE}")
    assert len(study.trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    pids = [t.user_attrs["pid"] for t in study.trials]
    assert sorted(pids.count(pid) for pid in set(pids)) == [4, 4]
    assert sorted(p.pid for p in procs) == sorted(set(pids))


def test_import_fulmen_search_does_not_import_optuna() -> None:
    code = "import sys, fulmen, fulmen.search; assert 'optuna' not in sys.modules, 'optuna imported'"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


# -- suggest -----------------------------------------------------------------------------------------
def test_suggest_reads_the_space() -> None:
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space = {
        "lr": (1e-4, 1e-1, "log"),
        "hidden": (16, 256),
        "dropout": (0.0, 0.5),
        "act": ["relu", "gelu"],
        "width": {"low": 32, "high": 128, "step": 32},
        "wd": {"low": 1e-6, "high": 1e-2, "log": True},
        "epochs": 3,
    }
    out = suggest(trial, space)
    assert set(out) == set(space) and out["epochs"] == 3
    assert isinstance(out["hidden"], int) and 16 <= out["hidden"] <= 256
    assert isinstance(out["lr"], float) and 1e-4 <= out["lr"] <= 1e-1
    assert out["act"] in ("relu", "gelu") and out["width"] in (32, 64, 96, 128)
    dists = trial.distributions
    assert dists["lr"].log and dists["wd"].log and not dists["dropout"].log
    assert isinstance(dists["hidden"], optuna.distributions.IntDistribution)
    assert isinstance(dists["dropout"], optuna.distributions.FloatDistribution)
    assert isinstance(dists["act"], optuna.distributions.CategoricalDistribution)
    assert "epochs" not in trial.params


@pytest.mark.parametrize("spec", [(1, 2, 3), (1,), [], {"low": 1}])
def test_suggest_rejects_unclear_entries(spec: Any) -> None:
    trial = optuna.create_study().ask()
    with pytest.raises(ValueError, match="'x'"):
        suggest(trial, {"x": spec})
