"""Checkpoints of a pipeline run, so ``edgekd run --resume`` loses at most one epoch.

Each training stage writes ``out/checkpoints/<stage>.state`` after every epoch (model, feature
adapters, optimizer, scheduler, RNG state, history: see ``distill.trainer``) and, when it ends,
its model to ``out/models/<stage>.pt``. A resumed run loads finished stages from ``models/`` and
continues an interrupted one from its ``.state`` file. Both carry the run's key (a hash of the
recipe's training sections and the data; export, targets, benchmark and budgets may change
between the two runs), so a folder holding another run is refused instead of mixed in.
Without ``--resume`` a run starts clean: ``edgekd.runfolder`` removes what the previous run wrote
(only files its manifest lists) and ``finished`` ignores any model left in ``models/``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgekd import atomic
from edgekd.errors import ConfigError


TRAINING_FIELDS = ("seed", "task", "data", "teacher", "teacher_training", "student", "student_training",
                   "distill", "qat")


class RunStore:
    """Where a run keeps stage checkpoints; only the lead process (rank 0) writes."""

    def __init__(self, out: Path, recipe: dict, data_fingerprint: str, *, resume: bool, lead: bool):
        self.out, self.resume, self.lead = out, resume, lead
        training = {k: recipe.get(k) for k in TRAINING_FIELDS}  # export/bench/budgets may change
        self.key = hashlib.sha256(json.dumps({"recipe": training, "data": data_fingerprint},
                                             sort_keys=True).encode()).hexdigest()[:16]
        self.dir = out / "checkpoints"
        key_file = self.dir / "run.key"
        if resume and key_file.is_file() and key_file.read_text().strip() != self.key:
            raise ConfigError(f"{out}: this folder holds a run of another recipe or data; resume it "
                              f"with the same recipe, or run without --resume to start over")

    def begin(self) -> None:
        """Mark the folder as holding this run (lead process; after the run's checks passed, so a
        refused run leaves no key behind). Old files were cleared by ``edgekd.runfolder``."""
        if self.lead:
            atomic.write_text(self.dir / "run.key", self.key + "\n")

    def state_path(self, stage: str) -> Path:
        """The per-epoch training state of ``stage`` (the trainer resumes from it if present)."""
        return self.dir / f"{stage}.state"

    def model_path(self, stage: str) -> Path:
        return self.out / "models" / f"{stage}.pt"

    def finished(self, stage: str) -> Path | None:
        """The saved model of ``stage`` when resuming a run that finished it, else None."""
        path = self.model_path(stage)
        if not self.resume or not path.is_file():
            return None
        from edgekd.models.factory import read_checkpoint

        extra = read_checkpoint(path).get("extra", {})
        return path if extra.get("run_key") == self.key else None
