"""Every loader in trainer.data on small fixtures built here (paths with spaces on purpose)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.emotions import EMOTIONS
from shared.training import TrainConfig
from tests.trainer_fixtures import faces, write_fer_csv, write_ferplus_csv, write_image, write_npz
from trainer.data import (DatasetError, attach_ferplus, canonical_split, concat, ferplus_soft_labels, load_dataset,
                          load_fer_csv, load_ferplus_votes, load_image_release, load_labelled_folder, load_npz)
from trainer.train import prepare_data


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "my data sets"
    path.mkdir()
    return path


def test_fer_csv_gives_all_three_splits(root):
    """The original Kaggle CSV: one Split per Usage value, pixels and labels intact."""
    labels = write_fer_csv(root / "fer2013.csv", {"Training": 14, "PublicTest": 7, "PrivateTest": 8})
    splits = load_fer_csv(root / "fer2013.csv")
    assert set(splits) == {"Training", "PublicTest", "PrivateTest"}
    for name, expected in labels.items():
        assert np.array_equal(splits[name].labels, expected)
        assert splits[name].images.shape == (len(expected), 48, 48)
    images, _ = faces(14, 0)
    assert np.array_equal(splits["Training"].images, images)
    assert set(load_dataset(root)) == {"Training", "PublicTest", "PrivateTest"}  # found inside a folder too


def test_fer_csv_with_bad_row_is_a_clear_error(root):
    (root / "fer2013.csv").write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(DatasetError, match="2304"):
        load_fer_csv(root / "fer2013.csv")


def test_image_release_recovers_official_splits_and_ids(root):
    """train/<class>/Training_1.jpg, test/<class>/PublicTest_2.jpg and PrivateTest_3.jpg map to their splits."""
    images, _ = faces(3, 5)
    write_image(root / "train" / "happy" / "Training_1.jpg", images[0])
    write_image(root / "test" / "sad" / "PublicTest_2.jpg", images[1])
    write_image(root / "test" / "angry" / "PrivateTest_3.jpg", images[2])
    write_image(root / "test" / "neutral" / "other photo.png", images[2])  # no prefix: falls back to the folder
    write_image(root / "train" / "contempt" / "Training_9.jpg", images[0])  # outside the seven: counted
    splits = load_dataset(root)
    assert set(splits) == {"Training", "PublicTest", "PrivateTest"}
    training = splits["Training"]
    assert training.labels.tolist() == [EMOTIONS.index("happy")] and training.ids.tolist() == [1]
    assert splits["PublicTest"].labels.tolist() == [EMOTIONS.index("sad")] and splits["PublicTest"].ids.tolist() == [2]
    private = splits["PrivateTest"]
    assert sorted(private.labels.tolist()) == sorted([EMOTIONS.index("angry"), EMOTIONS.index("neutral")])
    assert 3 in private.ids.tolist()
    assert training.skipped == {"contempt": 1}
    assert np.abs(training.images[0].astype(int) - images[0]).mean() < 4  # JPEG round trip


def test_image_release_with_unknown_folder_name_is_a_dataset_error(root):
    write_image(root / "train" / "hapy" / "Training_1.png", faces(1)[0][0])
    with pytest.raises(DatasetError, match="not an emotion"):
        load_image_release(root)


def test_npz_archive_and_split_from_file_name(root):
    path = write_npz(root / "fer2013_publictest.npz", 21, seed=3)
    split = load_npz(path)
    images, labels = faces(21, 3)
    assert split.name == "PublicTest"
    assert np.array_equal(split.images, images) and np.array_equal(split.labels, labels)
    assert split.ids.tolist() == list(range(21))
    assert split.class_counts() == {name: 3 for name in EMOTIONS}
    assert load_npz(path, split="Training").name == "Training"


def test_npz_with_wrong_class_order_is_refused(root):
    path = root / "bad.npz"
    np.savez(path, images=np.zeros((1, 48, 48), np.uint8), labels=np.zeros(1, np.int64),
             classes=np.array(list(reversed(EMOTIONS))))
    with pytest.raises(DatasetError, match="FER order"):
        load_npz(path)
    (root / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable"):
        load_npz(root / "broken.npz")


def test_extra_folder_aliases_and_skipped_contempt(root):
    """anger/, disgusted/, fearful/, surprised/ map to FER labels; contempt/ is skipped and counted."""
    images, _ = faces(6, 1)
    for index, folder in enumerate(("anger", "disgusted", "fearful", "surprised")):
        write_image(root / "extra set" / folder / f"img {index}.png", images[index])
    write_image(root / "extra set" / "contempt" / "a.png", images[4])
    write_image(root / "extra set" / "contempt" / "b.jpg", images[5])
    (root / "extra set" / "anger" / "notes.txt").write_text("not an image")
    (root / "extra set" / "anger" / "broken.png").write_bytes(b"\x89PNG broken")
    split = load_labelled_folder(root / "extra set")
    assert sorted(split.labels.tolist()) == [EMOTIONS.index(n) for n in ("angry", "disgust", "fear", "surprise")]
    assert split.skipped == {"contempt": 2, "unreadable": 1}
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == (48, 48)


def test_ferplus_csv_votes_become_soft_labels(root):
    """fer2013new.csv rows follow fer2013.csv; votes (FER+ column order) become FER-order distributions."""
    write_fer_csv(root / "fer2013.csv", {"Training": 3, "PublicTest": 1})
    # columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    write_ferplus_csv(root / "fer2013new.csv", [
        ("Training", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),   # all happy
        ("Training", [5, 0, 0, 0, 5, 0, 0, 0, 0, 0]),    # half neutral, half anger
        ("Training", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),   # not a face: keeps its FER label
        ("PublicTest", [0, 0, 8, 0, 0, 0, 0, 2, 0, 0]),  # contempt votes dropped
    ])
    votes = load_ferplus_votes(root / "fer2013new.csv")
    assert set(votes) == {"Training", "PublicTest"} and votes["Training"].shape == (3, 10)
    soft, valid = ferplus_soft_labels(votes["PublicTest"])
    assert valid.tolist() == [True] and soft[0, EMOTIONS.index("surprise")] == pytest.approx(1.0)

    training = load_fer_csv(root / "fer2013.csv")["Training"]
    attach_ferplus(training, votes["Training"], fer_weight=0.0)
    assert training.soft[0, EMOTIONS.index("happy")] == pytest.approx(1.0)
    assert training.soft[1, EMOTIONS.index("neutral")] == pytest.approx(0.5)
    assert training.soft[1, EMOTIONS.index("angry")] == pytest.approx(0.5)
    assert training.soft[2, training.labels[2]] == pytest.approx(1.0)
    assert np.allclose(training.soft.sum(axis=1), 1.0)


def test_ferplus_npz_votes_and_unmatched_rows(root):
    """Aligned archives: unmatched (assumed-NF) rows are unlabelled, not non-faces, so they keep FER labels."""
    votes = np.zeros((7, 10), np.int16)
    votes[:, 1] = 10  # everyone says happiness
    votes[6] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
    unmatched = np.zeros(7, bool)
    unmatched[6] = True
    np.savez(root / "ferplus_votes_training.npz", votes=votes, unmatched_assumed_nf=unmatched)
    loaded = load_ferplus_votes(root)
    assert set(loaded) == {"Training"}
    split = load_npz(write_npz(root / "fer2013_training.npz", 7), "Training")
    attach_ferplus(split, loaded["Training"], fer_weight=0.5)
    happy = EMOTIONS.index("happy")
    assert split.soft[0, happy] == pytest.approx(0.5) and split.soft[0, 0] == pytest.approx(0.5)
    assert split.soft[6, split.labels[6]] == pytest.approx(1.0)
    with pytest.raises(DatasetError, match="not aligned"):
        attach_ferplus(load_npz(write_npz(root / "other.npz", 5)), loaded["Training"])


def test_prepare_data_combines_ferplus_extra_and_subsampling(root):
    """What `train` sees: FER+ soft labels on Training, extra folders appended with one-hot soft labels."""
    fer = root / "fer"
    fer.mkdir()
    write_npz(fer / "fer2013_training.npz", 70, seed=1)
    write_npz(fer / "fer2013_publictest.npz", 28, seed=2)
    votes = np.zeros((70, 10), np.int16)
    votes[:, 0] = 4  # neutral
    np.savez(root / "ferplus_votes_training.npz", votes=votes)
    write_image(root / "extra" / "fearful" / "x.png", faces(1)[0][0])
    write_image(root / "extra" / "contempt" / "y.png", faces(1)[0][0])
    cfg = TrainConfig(data=fer, ferplus=root, extra=[root / "extra"], max_images=35, fer_weight=0.0)
    data = prepare_data(cfg)
    assert len(data.train) == 35 + 1
    assert data.train.soft is not None
    assert data.train.soft[0, EMOTIONS.index("neutral")] == pytest.approx(1.0)
    assert data.train.labels[-1] == EMOTIONS.index("fear") and data.train.soft[-1].max() == pytest.approx(1.0)
    assert data.train.skipped == {"contempt": 1}
    assert data.val.name == "PublicTest" and len(data.val) == 7  # stratified subsample too


def test_split_names_and_concat():
    assert canonical_split("train") == "Training" and canonical_split("Public_Test") == "PublicTest"
    with pytest.raises(DatasetError):
        canonical_split("holdout")
    images, labels = faces(7)
    from trainer.data import Split

    joined = concat([Split("a", images, labels), Split("b", images, labels, skipped={"contempt": 2})], "Training")
    assert len(joined) == 14 and joined.skipped == {"contempt": 2} and joined.soft is None
