"""Search the digits classifier's learning rate and hidden width with Optuna.

    python examples/search_digits.py [--trials 6] [--epochs 4] [--root runs/search_digits]

Each trial trains ``DigitsClassifier`` (examples/digits.py) for a few epochs with a learning rate
and hidden width drawn by Optuna's TPE sampler, reports ``val_loss`` after every epoch and is
pruned when it falls behind the median of earlier trials. The study is kept in
``<root>/fulmen-optuna.db``: run the script again, or in several processes at once, and the new
trials join the same study. At the end it trains the default settings once more for comparison
and prints the best parameters.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import optuna
import torch

import fulmen
from fulmen.search import PruningCallback, run_study, suggest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits import DigitsClassifier, DigitsData

SPACE = {
    "lr": (1e-3, 3e-2, "log"),  # the default is 2e-3
    "hidden": (32, 256, "log"),  # the default is 128
}


def train(params: dict[str, Any], epochs: int, root: str, seed: int, callbacks: list[Any] | None = None) -> float:
    """Train DigitsClassifier(**params) for ``epochs`` epochs; return the last val_loss."""
    fulmen.seed_everything(seed, workers=True)
    system = DigitsClassifier(**params)
    trainer = fulmen.Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        logger=fulmen.CSVLogger(root, name="search"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        accelerator="cpu",
    )
    trainer.fit(system, datamodule=DigitsData(seed=seed))
    return float(trainer.callback_metrics["val_loss"])


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--root", default=os.path.join("runs", "search_digits"), help="folder for the study and logs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(min(2, torch.get_num_threads()))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, SPACE)
        pruning = PruningCallback(trial, monitor="val_loss")
        return train(params, args.epochs, args.root, args.seed, callbacks=[pruning])

    study = run_study(
        objective,
        n_trials=args.trials,
        study_name="digits",
        storage_dir=args.root,
        seed=args.seed,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    default_loss = train({}, args.epochs, args.root, args.seed)
    states = [t.state.name.lower() for t in study.trials]

    print()
    print(f"trials      : {len(study.trials)} ({states.count('complete')} complete, {states.count('pruned')} pruned)")
    print(f"best params : {study.best_params}")
    print(f"best val_loss    = {study.best_value:.4f}  (trial {study.best_trial.number})")
    print(f"default val_loss = {default_loss:.4f}  (hidden=128, lr=0.002)")
    print(f"study       : {os.path.join(args.root, 'fulmen-optuna.db')} (study 'digits')")
    return {
        "best_params": study.best_params,
        "best_value": study.best_value,
        "default_value": default_loss,
        "study": study,
    }


if __name__ == "__main__":
    main()
