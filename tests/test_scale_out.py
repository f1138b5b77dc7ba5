"""Interrupted runs resume and lose nothing; torchrun with 2 CPU processes matches one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import edgekd.pipeline as pipeline
from edgekd.config import dump_yaml
from edgekd.errors import ConfigError
from tests.recipes import short_recipe


def _small_recipe():
    return short_recipe(epochs=4, qat_epochs=2)


def _accuracies(report) -> dict:
    return {e.name: e.accuracy for e in report.entries}


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    recipe, cache = _small_recipe(), tmp_path / "cache"
    whole = pipeline.run(recipe, tmp_path / "whole", cache_dir=cache)

    real_distill = pipeline.stages.distill

    class Killed(Exception):
        pass

    def dies_in_kd_epoch_3(*args, **kwargs):
        if kwargs.get("desc") == "student (KD)":
            def stop(epoch):
                if epoch == 2:
                    raise Killed
            kwargs["on_epoch_start"] = stop
        return real_distill(*args, **kwargs)

    monkeypatch.setattr(pipeline.stages, "distill", dies_in_kd_epoch_3)
    with pytest.raises(Killed):
        pipeline.run(recipe, tmp_path / "resumed", cache_dir=cache)
    assert (tmp_path / "resumed/models/student-scratch.pt").is_file()  # a finished stage
    assert (tmp_path / "resumed/checkpoints/student-kd.state").is_file()  # 2 epochs of the next
    monkeypatch.setattr(pipeline.stages, "distill", real_distill)
    resumed = pipeline.run(recipe, tmp_path / "resumed", cache_dir=cache, resume=True)
    assert _accuracies(resumed.report) == _accuracies(whole.report)
    kd = next(e for e in resumed.report.entries if e.name == "student-kd.pytorch")
    assert [r["epoch"] for r in kd.info["training"]["history"]] == [1, 2, 3, 4]


def test_resume_refuses_a_folder_of_another_recipe(tmp_path):
    recipe = _small_recipe()
    recipe.student_training.epochs = 1
    recipe.teacher_training.epochs = 1
    recipe.qat.enabled = False
    pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    recipe.student_training.epochs = 2
    with pytest.raises(ConfigError, match="holds a run of another recipe"):
        pipeline.run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache", resume=True)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun comes with torch")
def test_torchrun_two_processes_match_one_process(tmp_path):
    recipe = short_recipe(epochs=8, qat_epochs=2)  # trained far enough that half-batch BN is noise
    recipe.qat.enabled = False
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(dump_yaml(recipe.to_dict()))
    env = dict(os.environ, EDGEKD_PROGRESS="0", OMP_NUM_THREADS="1")
    edgekd = shutil.which("edgekd") or f"{sys.executable} -m edgekd.cli"
    runs = {"single": [edgekd, "run"],
            "ddp": [shutil.which("torchrun"), "--nproc_per_node=2", "--standalone", edgekd, "run"]}
    reports = {}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, str(recipe_file), "--out", str(tmp_path / name), "--cache",
                               str(tmp_path / f"cache-{name}")], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    acc = {n: {e["name"]: e["accuracy"] for e in r["entries"]} for n, r in reports.items()}
    assert set(acc["ddp"]) == set(acc["single"])
    for entry, value in acc["single"].items():  # BatchNorm sees half batches per rank: close, not equal
        assert abs(acc["ddp"][entry] - value) <= 0.05, (entry, acc)
    assert not list((tmp_path / "ddp").glob("**/*.tmp*"))  # one writer: no half-written leftovers
