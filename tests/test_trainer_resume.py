"""Resumable training: a run stopped mid-way continues at the next epoch from its backup (the
promise behind `--run-dir` for long CPU trainings spread over several sittings)."""

from __future__ import annotations

import csv

import pytest

from shared.training import TrainConfig
from tests.trainer_fixtures import exported_model, write_fer_folder

pytestmark = pytest.mark.slow  # trains (tiny) models with TensorFlow


@pytest.fixture
def initial_loads(monkeypatch) -> list[str]:
    """The paths `train` loads --init-from weights from (the real loader still runs)."""
    import trainer.train as training

    loads: list[str] = []
    real_load = training.load_initial_weights
    monkeypatch.setattr(training, "load_initial_weights",
                        lambda path, model: loads.append(str(path)) or real_load(path, model))
    return loads


class Interrupted(Exception):
    """Stands for the sitting ending (Ctrl+C, a job timeout, the machine going away)."""


def test_an_interrupted_training_resumes_at_the_next_epoch_from_its_backup(tmp_path, initial_loads):
    import trainer.train as training

    data = write_fer_folder(tmp_path / "fer data", n_train=140, n_val=35)
    run_dir = tmp_path / "run"
    cfg = TrainConfig(data=data, model="compact16", epochs=3, batch_size=32, augment=False, run_dir=run_dir,
                      init_from=exported_model(), promote="never")

    def stop_after_first_epoch(update: dict) -> None:
        if update["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        training.train(cfg, progress=stop_after_first_epoch, verbose=0)
    assert any((run_dir / "backup").iterdir()), "no backup left to resume from"
    initial_loads.clear()  # the first sitting started from --init-from; the second must not

    epochs_seen: list[int] = []
    result = training.train(cfg, progress=lambda update: epochs_seen.append(update["epoch"]), verbose=0)

    assert epochs_seen == [2, 3]  # continued, not restarted
    assert initial_loads == []  # the backup's weights, not --init-from's, carry on
    with open(result.history_path) as history:
        assert [int(row["epoch"]) for row in csv.DictReader(history)] == [0, 1, 2]
    assert result.epochs_run == 3
    assert not (run_dir / "backup").exists() or not any((run_dir / "backup").iterdir())


def test_a_fresh_run_starts_from_init_from(tmp_path, initial_loads):
    import trainer.train as training

    data = write_fer_folder(tmp_path / "fer data", n_train=70, n_val=35)
    cfg = TrainConfig(data=data, model="compact16", epochs=1, batch_size=32, augment=False,
                      run_dir=tmp_path / "run", init_from=exported_model(), promote="never")
    training.train(cfg, verbose=0)
    assert len(initial_loads) == 1 and initial_loads[0].startswith(str(exported_model()))
