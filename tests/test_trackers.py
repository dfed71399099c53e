"""Experiment trackers through accelerate (report_to): the same metrics as metrics.jsonl, the config,
and the run's pictures as images; wandb tested offline."""

import json

import pytest

from elbo_kernels.train import TrainConfig, Trainer
from elbo_kernels.train.trackers import tracker_names


def small(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), epochs=2, prompts_per_epoch=2, group_size=2,
                  draws_per_sample=2, eval_every=0, eval_seeds=1, checkpoint_every=0, progress=False,
                  backend="torch")
    values.update(overrides)
    return TrainConfig(**values)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("report_to,tensorboard,expected", [
    ("tensorboard", True, ["tensorboard"]), ("wandb", True, ["wandb"]), ("all", True, ["tensorboard", "wandb"]),
    ("none", True, []), ("all", False, ["wandb"]),
])
def test_report_to_names_the_trackers(report_to, tensorboard, expected):
    assert tracker_names(report_to, tensorboard) == expected


def test_unknown_tracker_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="'report_to' has value 'mlflow'"):
        small(tmp_path, report_to="mlflow").validate()


def test_tensorboard_gets_every_metric_and_the_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(small(tmp_path, report_to="tensorboard")).fit()
    run = tmp_path / "run"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    records = _records(run)
    logged = events.Scalars("reward_mean")
    assert [e.step for e in logged] == [r["epoch"] for r in records]
    assert [e.value for e in logged] == pytest.approx([r["reward_mean"] for r in records], rel=1e-6)
    assert {"samples_before", "samples_after", "curve"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("curve")] == [2]


def test_none_writes_no_tracker_files(tmp_path):
    Trainer(small(tmp_path, report_to="none", plots=False)).fit()
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "wandb").exists()


def test_wandb_offline_run_gets_every_metric_and_the_pictures(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from accelerate.tracking import WandBTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sent = []
    original = WandBTracker.log

    def spy(self, values, step=None, **kwargs):  # what reaches wandb.run.log (its offline file is internal)
        sent.append((step, dict(values)))
        return original(self, values, step=step, **kwargs)

    monkeypatch.setattr(WandBTracker, "log", spy)
    Trainer(small(tmp_path, report_to="wandb")).fit()
    records = _records(tmp_path / "run")
    metrics = [(step, values) for step, values in sent if "reward_mean" in values]
    assert [step for step, _ in metrics] == [r["epoch"] for r in records]
    assert [v["reward_mean"] for _, v in metrics] == [r["reward_mean"] for r in records]
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))
    images = {p.name.rsplit("_", 2)[0] for p in (run / "files" / "media" / "images").glob("*.png")}
    assert images == {"samples_before", "samples_after", "curve"}


def test_wandb_writes_under_a_users_wandb_dir_when_it_is_set(tmp_path, monkeypatch):
    """Before (issue 24), WANDB_DIR was ignored: wandb always wrote under OUTPUT_DIR/wandb."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "users_wandb"))
    Trainer(small(tmp_path, report_to="wandb", plots=False)).fit()
    assert list((tmp_path / "users_wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert not (tmp_path / "run" / "wandb").exists()


def test_one_eval_seed_reports_diversity_as_not_measured_without_nan_or_numpy_warnings(tmp_path, capsys):
    """Before (issue 24), eval_seeds 1 gave diversity NaN with numpy's "Mean of empty slice" warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        summary = Trainer(small(tmp_path, plots=False, tensorboard=False)).fit()
    assert summary["diversity_before"] is None and summary["diversity_after"] is None
    assert all("diversity" not in record for record in _records(tmp_path / "run"))
    assert "diversity not measured (it needs eval_seeds >= 2)" in capsys.readouterr().out
    assert "nan" not in (tmp_path / "run" / "summary.json").read_text().lower()
