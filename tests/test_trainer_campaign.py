"""Training campaigns: state that outlives a machine (float16 weights, schedule position, history),
resumed on a fresh checkout; distillation from a frozen teacher; shipping a campaign as a model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.trainer_fixtures import write_fer_folder
from trainer.recipes import BEST_FILE, RECIPES, TEACHER_FILE, WEIGHTS_FILE, CampaignState, Recipe

pytestmark = pytest.mark.slow  # trains (tiny) models with TensorFlow

TINY = Recipe(architecture="compact16", cycles=[2, 2], batch_size=32, warmup_epochs=0.5, peak_lr=3e-3,
              optimizer="adamw", weight_decay=1e-2)


def cli_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_") and k != "REDIS_URL"}
    env.update(PYTHONPATH=str(REPO_ROOT), EMOTION_REGISTRY_DIR=str(tmp_path / "registry"), TF_CPP_MIN_LOG_LEVEL="2")
    return env


@pytest.fixture
def tiny_data(tmp_path):
    return str(write_fer_folder(tmp_path / "fer data", n_train=140, n_val=35))


def test_learning_rate_is_a_function_of_the_epoch_position_with_warm_restarts():
    recipe = Recipe(cycles=[10, 20], warmup_epochs=1, peak_lr=0.1, peak_decay=0.5, min_lr_fraction=0.0)
    assert recipe.learning_rate(0.5) == pytest.approx(0.05)  # warm-up
    assert recipe.learning_rate(1.0) == pytest.approx(0.1)  # peak after warm-up
    assert recipe.learning_rate(10 - 1e-9) == pytest.approx(0.0, abs=1e-6)  # end of the first cycle
    assert recipe.learning_rate(10) == pytest.approx(0.05)  # restart at the decayed peak
    assert recipe.learning_rate(20) == pytest.approx(0.025)  # half-way down the second cosine
    assert recipe.learning_rate(30) == pytest.approx(0.0, abs=1e-6)
    assert recipe.cycle_ends() == [10, 30] and recipe.total_epochs == 30


def test_recipes_validate_their_crop_range():
    with pytest.raises(ValueError, match="crop_min"):
        Recipe(crop_min=46, crop_max=44)


def test_a_campaign_resumes_from_committed_float16_state_on_a_fresh_checkout(tmp_path, tiny_data):
    """The promise behind `emotion train --resume models/<run>`: only the state directory travels."""
    from trainer.campaign import start_campaign, train_epochs

    first_machine = tmp_path / "first" / "tiny-v1"
    start_campaign(first_machine, TINY, tiny_data)
    state = train_epochs(first_machine, max_epochs=1, command="sitting 1")
    assert state.epochs_done == 1 and [r.epoch for r in state.history] == [1]
    with np.load(first_machine / WEIGHTS_FILE) as weights:
        assert {weights[name].dtype for name in weights.files} == {np.dtype(np.float16)}
    assert (first_machine / BEST_FILE).is_file()

    # A fresh machine has only the repository: copy the committed files, nothing else.
    second_machine = tmp_path / "second" / "tiny-v1"
    second_machine.mkdir(parents=True)
    for name in ("campaign.json", WEIGHTS_FILE, BEST_FILE):
        shutil.copyfile(first_machine / name, second_machine / name)
    resumed = train_epochs(second_machine, max_epochs=2, command="sitting 2")

    assert resumed.epochs_done == 3
    assert [r.epoch for r in resumed.history] == [1, 2, 3]  # each epoch once, in order
    assert resumed.history[0] == state.history[0]  # the first sitting's record is kept as it was
    assert [(s.first_epoch, s.last_epoch, s.command) for s in resumed.stretches] == [(1, 1, "sitting 1"),
                                                                                   (2, 3, "sitting 2")]
    # The schedule continued where it stopped: epoch 3 ends at the position 3 of the recipe's curve.
    steps = int(np.ceil(140 / TINY.batch_size))
    assert resumed.history[2].learning_rate == pytest.approx(TINY.learning_rate(2 + (steps - 1) / steps), rel=1e-5)
    assert CampaignState.read(second_machine) == resumed


def test_a_finished_campaign_trains_nothing_more(tmp_path, tiny_data):
    from trainer.campaign import start_campaign, train_epochs

    run = tmp_path / "done-v1"
    start_campaign(run, TINY.model_copy(update={"cycles": [1]}), tiny_data)
    assert train_epochs(run).finished
    assert train_epochs(run, command="again").stretches[-1].command != "again"


def test_a_campaign_refuses_other_training_data(tmp_path, tiny_data):
    from trainer.campaign import CampaignError, start_campaign, train_epochs

    run = tmp_path / "run-v1"
    start_campaign(run, TINY, tiny_data)
    other = write_fer_folder(tmp_path / "other data", n_train=147, n_val=35)
    state = CampaignState.read(run)
    state.data = str(other)
    state.write(run)
    with pytest.raises(CampaignError, match="differs"):
        train_epochs(run, max_epochs=1)


def test_distillation_loss_is_smallest_when_the_student_matches_the_teacher():
    import tensorflow as tf

    from trainer.campaign import distillation_loss

    teacher = tf.constant([[0.7, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03]])
    other = tf.constant([[0.1, 0.7, 0.05, 0.05, 0.04, 0.03, 0.03]])
    same = float(distillation_loss(teacher, teacher, 4.0))
    soft = tf.nn.softmax(tf.math.log(teacher) / 4.0)
    entropy = -float(tf.reduce_sum(soft * tf.math.log(soft)))
    assert same == pytest.approx(16 * entropy, rel=1e-4)  # T^2 x the softened teacher's entropy
    assert float(distillation_loss(teacher, other, 4.0)) > same


def test_distillation_trains_from_a_teacher_frozen_at_the_start(tmp_path, tiny_data):
    from trainer.campaign import start_campaign, train_epochs

    teacher_dir = tmp_path / "teacher-v1"
    start_campaign(teacher_dir, TINY.model_copy(update={"cycles": [1]}), tiny_data)
    train_epochs(teacher_dir)
    student_recipe = TINY.model_copy(update={"teacher": teacher_dir, "distill_weight": 0.7, "temperature": 3.0})
    student_dir = tmp_path / "student-v1"
    started = start_campaign(student_dir, student_recipe, tiny_data)
    assert started.teacher_epoch == 1 and started.teacher_recipe == TINY.model_copy(update={"cycles": [1]})
    frozen = (student_dir / TEACHER_FILE).read_bytes()
    assert frozen == (teacher_dir / BEST_FILE).read_bytes()

    (teacher_dir / BEST_FILE).unlink()  # the teacher's campaign may move on (or be absent on this machine)
    state = train_epochs(student_dir, max_epochs=2)
    assert state.epochs_done == 2 and all(np.isfinite(r.loss) for r in state.history)


def test_a_student_cannot_start_from_a_teacher_with_another_input_side(tmp_path, tiny_data):
    from trainer.campaign import CampaignError, start_campaign, train_epochs

    teacher_dir = tmp_path / "teacher-v1"
    start_campaign(teacher_dir, TINY.model_copy(update={"cycles": [1]}), tiny_data)
    train_epochs(teacher_dir)
    with pytest.raises(CampaignError, match="must match"):
        start_campaign(tmp_path / "student-v1", TINY.model_copy(update={"teacher": teacher_dir, "input_size": 40,
                                                                        "crop_min": 40}), tiny_data)


def test_a_shipped_campaign_serves_its_central_window_with_ten_crop_scores(tmp_path, tiny_data):
    from shared.model_runtime import EmotionModel, read_metadata
    from trainer.campaign import start_campaign, train_epochs
    from trainer.ship import ship_campaign

    run = tmp_path / "ship-v1"
    start_campaign(run, TINY.model_copy(update={"cycles": [1]}), tiny_data)
    train_epochs(run, command="emotion train --resume ship-v1")
    out = ship_campaign(run, tmp_path / "shipped")
    meta = read_metadata(out)
    assert meta.version == "ship-v1-e1" and meta.preprocess.input_size == 48 and meta.preprocess.network_size == 44
    public = meta.metrics["PublicTest"]
    assert public["n"] == 35 and {"top1", "top1_tta", "top1_ten_crop", "faces_per_s"} <= set(public)
    model = EmotionModel(out)
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    assert model.predict(crops).shape == (3, 7)
    ten = model.predict_tta(crops, "ten-crop")
    assert ten.shape == (3, 7) and np.allclose(ten.sum(axis=1), 1, atol=1e-5)
    report = (out / "report.md").read_text()
    assert "ten-crop" in report and "emotion train --resume ship-v1" in report and (out / "curve.png").is_file()
    assert not (out / "model.keras").exists()  # the campaign's float16 weights are the trainable copy
    assert meta.model_dump()["tflite_weights"] == "float16"
    # The framing it crops with is the shipped default's, and so is the record of how it was calibrated.
    source = json.loads((REPO_ROOT / "models" / "default" / "metadata.json").read_text())
    shipped = json.loads((out / "metadata.json").read_text())
    assert shipped["preprocess"]["framing"] == source["preprocess"]["framing"]
    assert shipped["framing_calibration"] == source["framing_calibration"]


def test_recipe_full_runs_from_the_cli_as_one_command(tmp_path, tiny_data):
    """`emotion train --recipe full` is the GPU command; here one tiny epoch of it on the CPU."""
    run = tmp_path / "full-v1"
    done = subprocess.run([sys.executable, "-m", "emotion", "train", "--recipe", "full", "--run-dir", str(run),
                           "--data", tiny_data, "--epochs-total", "1"], env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["epochs_done"] == 1 and summary["finished"]
    state = CampaignState.read(run)
    assert state.recipe.architecture == RECIPES["full"].architecture and state.recipe.cycles == [1]
    assert state.stretches[0].command == f"emotion train --resume {run}"
    resumed = subprocess.run([sys.executable, "-m", "emotion", "train", "--resume", str(run)], env=cli_env(tmp_path),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and json.loads(resumed.stdout.strip().splitlines()[-1])["epochs_done"] == 1


def test_resume_of_a_missing_campaign_is_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "emotion", "train", "--resume", str(tmp_path / "nope")],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("emotion train: error:")
    assert "not a training campaign directory" in done.stderr


def test_checkpoint_every_saves_every_nth_epoch_and_every_cycle_end(tmp_path, tiny_data):
    from trainer.campaign import start_campaign, train_epochs

    run = tmp_path / "sparse-v1"
    start_campaign(run, TINY.model_copy(update={"cycles": [3, 2], "checkpoint_every": 2}), tiny_data)
    state = train_epochs(run)
    assert [r.epoch for r in state.history] == [2, 3, 4, 5]  # 2 and 4 by the interval, 3 and 5 end cycles
    assert state.epochs_done == 5 and state.finished


def test_two_campaigns_ship_as_one_graph_that_averages_their_probabilities(tmp_path, tiny_data):
    from shared.model_runtime import EmotionModel, read_metadata
    from trainer.campaign import CampaignError, build_model, centre_crop, load_weights, predict, start_campaign, \
        train_epochs
    from trainer.ship import ship_campaign

    first, second = tmp_path / "first-v1", tmp_path / "second-v1"
    start_campaign(first, TINY.model_copy(update={"cycles": [1]}), tiny_data)
    start_campaign(second, TINY.model_copy(update={"cycles": [1], "seed": 7}), tiny_data)
    train_epochs(first)
    train_epochs(second)
    crops = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    alone = []
    for run in (first, second):
        network = build_model(CampaignState.read(run).recipe)
        load_weights(network, run / BEST_FILE)
        alone.append(predict(network, centre_crop(crops, TINY.input_size)[..., None].astype(np.float32)))
    out = ship_campaign(first, tmp_path / "both", also=[second])
    meta = read_metadata(out)
    assert meta.version == "first-v1-e1-with-second-v1-e1" and meta.architecture == "compact16+compact16"
    assert [m["name"] for m in json.loads((out / "metadata.json").read_text())["campaign"]["ensemble"]] == \
        ["first-v1", "second-v1"]
    assert "the mean of the probabilities of `first-v1` epoch 1" in (out / "report.md").read_text()
    assert np.allclose(EmotionModel(out).predict(crops), (alone[0] + alone[1]) / 2, atol=2e-3)
    assert not np.allclose(alone[0], alone[1], atol=2e-3)  # two different networks: the average is not trivial

    narrow = tmp_path / "narrow-v1"
    start_campaign(narrow, TINY.model_copy(update={"cycles": [1], "input_size": 40, "crop_min": 40}), tiny_data)
    train_epochs(narrow)
    with pytest.raises(CampaignError, match="must match"):
        ship_campaign(first, tmp_path / "mixed", also=[narrow])
