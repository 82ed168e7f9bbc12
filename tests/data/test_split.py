"""split: no patient in two splits, positive rates kept, seeded, folds disjoint; the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from pneumoseg.data.split import make_splits, read_index, split_summary, write_splits
from pneumoseg.errors import DataError


def synthetic_index(n_patients: int = 1200, seed: int = 0) -> pd.DataFrame:
    """~3,000 images: 1-5 per patient; a patient's images share a high or low positive chance."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        chance = 0.6 if rng.random() < 0.25 else 0.08
        for k in range(int(rng.integers(1, 6))):
            rows.append({"image_id": f"img{p:05d}_{k}", "patient_id": f"pat{p:05d}",
                         "has_pneumothorax": int(rng.random() < chance)})
    return pd.DataFrame(rows)


def _app() -> typer.Typer:
    try:
        from pneumoseg.cli.main import app
    except Exception:  # another command module may be missing
        from pneumoseg.cli import split as cmd

        app = typer.Typer()
        cmd.register(app)
        app.command("noop", hidden=True)(lambda: None)
    return app


@pytest.fixture(scope="module")
def index() -> pd.DataFrame:
    return synthetic_index()


def _by_patient(index: pd.DataFrame, splits: pd.DataFrame, col: str) -> pd.Series:
    return index.merge(splits, on="image_id").groupby("patient_id")[col].nunique()


def test_no_patient_in_two_splits_and_rates_kept(index):
    splits = make_splits(index, val=0.1, test=0.2, seed=10)
    assert list(splits.columns) == ["image_id", "split"]
    assert list(splits["image_id"]) == list(index["image_id"])
    assert (_by_patient(index, splits, "split") == 1).all()
    df = index.merge(splits, on="image_id")
    shares = df["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.01)
    assert shares["val"] == pytest.approx(0.1, abs=0.01)
    assert shares["test"] == pytest.approx(0.2, abs=0.01)
    overall = index["has_pneumothorax"].mean()
    for rate in df.groupby("split")["has_pneumothorax"].mean():
        assert rate == pytest.approx(overall, abs=0.01)


def test_deterministic_with_seed_and_seed_matters(index):
    a = make_splits(index, seed=3)
    assert a.equals(make_splits(index, seed=3))
    assert not a.equals(make_splits(index, seed=4))
    shuffled = index.sample(frac=1.0, random_state=1).reset_index(drop=True)
    b = make_splits(shuffled, seed=3).set_index("image_id").loc[a["image_id"]].reset_index()
    assert b.equals(a)  # row order of the index does not change the assignment


def test_folds_disjoint_grouped_and_stratified(index):
    k = 5
    splits = make_splits(index, test=0.1, folds=k, seed=10)
    assert list(splits.columns) == ["image_id", "split", "fold"]
    df = index.merge(splits, on="image_id")
    assert set(df["fold"]) == {-1, *range(k)}
    assert (df["split"] == "test").eq(df["fold"] == -1).all()
    assert (df["split"] == "val").eq(df["fold"] == 0).all()
    assert (_by_patient(index, splits, "fold") == 1).all()  # folds disjoint by patient
    assert df["image_id"].is_unique
    rest = df[df["fold"] >= 0]
    sizes = rest["fold"].value_counts(normalize=True)
    assert np.allclose(sizes, 1 / k, atol=0.01)
    overall = index["has_pneumothorax"].mean()
    for rate in rest.groupby("fold")["has_pneumothorax"].mean():
        assert rate == pytest.approx(overall, abs=0.015)
    assert (df["split"] == "test").mean() == pytest.approx(0.1, abs=0.01)


def test_no_test_and_no_val():
    index = synthetic_index(200)
    splits = make_splits(index, val=0.0, test=0.0)
    assert set(splits["split"]) == {"train"}
    assert set(make_splits(index, val=0.2, test=0.0)["split"]) == {"train", "val"}


def test_images_without_patient_are_own_groups_with_warning():
    index = pd.DataFrame({"image_id": [f"i{k}" for k in range(100)], "patient_id": [""] * 100,
                          "has_pneumothorax": [k % 4 == 0 for k in range(100)]})
    with pytest.warns(UserWarning, match="100 of 100 images have no patient_id"):
        splits = make_splits(index, val=0.2, test=0.2)
    assert splits["split"].value_counts().to_dict() == {"train": 60, "val": 20, "test": 20}
    pos = index.merge(splits, on="image_id").groupby("split")["has_pneumothorax"].sum().to_dict()
    assert pos == {"train": 15, "val": 5, "test": 5}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"val": -0.1}, "--val -0.1"), ({"test": 1.0}, "--test 1.0"), ({"val": 0.5, "test": 0.5}, "sum < 1"),
    ({"folds": 1}, "K >= 2"), ({"folds": -2}, "K >= 2"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        make_splits(synthetic_index(50), **kwargs)


def test_bad_index():
    with pytest.raises(DataError, match="has_pneumothorax"):
        make_splits(pd.DataFrame({"image_id": ["a"]}))
    with pytest.raises(DataError, match="'a' more than once"):
        make_splits(pd.DataFrame({"image_id": ["a", "a"], "has_pneumothorax": [0, 1]}))
    with pytest.raises(DataError, match="more than the 2 patients"):
        two = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "q"], "has_pneumothorax": [0, 1]})
        make_splits(two, folds=3)


def test_missing_index_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"index\.csv not found.*pneumoseg prepare"):
        write_splits(tmp_path)


def test_write_splits_and_summary(tmp_path, index):
    index.to_csv(tmp_path / "index.csv", index=False)
    path = write_splits(tmp_path, folds=3, seed=1)
    written = pd.read_csv(path, dtype={"image_id": str})
    assert written.equals(make_splits(read_index(tmp_path), folds=3, seed=1))
    summary = split_summary(read_index(tmp_path), written)
    assert summary["images"].sum() == len(index)
    assert summary["patients"].sum() == index["patient_id"].nunique()


def test_cli_split_prints_table(tmp_path, index):
    index.to_csv(tmp_path / "index.csv", index=False)
    res = CliRunner().invoke(_app(), ["split", str(tmp_path), "--val", "0.1", "--test", "0.1", "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "val" in res.output and "test" in res.output and "%" in res.output
    assert (tmp_path / "splits.csv").is_file()
    res = CliRunner().invoke(_app(), ["split", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "index.csv not found" in " ".join(res.output.split())
    res = CliRunner().invoke(_app(), ["split", str(tmp_path), "--val", "1.5"])
    assert res.exit_code == 2 and "[0, 1)" in res.output


def test_val_with_folds_is_refused_not_ignored(index):
    with pytest.raises(DataError, match=r"--val 0\.2 with --folds 5.*drop --val"):
        make_splits(index, val=0.2, folds=5)
    assert list(make_splits(index, folds=5).columns) == ["image_id", "split", "fold"]  # no --val: fine


def test_existing_different_splits_kept_unless_force(tmp_path, index):
    index.to_csv(tmp_path / "index.csv", index=False)
    path = write_splits(tmp_path, seed=1)
    first = path.read_bytes()
    assert write_splits(tmp_path, seed=1) == path and path.read_bytes() == first  # same split: fine
    with pytest.raises(DataError, match=r"splits\.csv exists and differs.*\d+ image\(s\) would change split"
                                        r".*--force"):
        write_splits(tmp_path, seed=2)
    assert path.read_bytes() == first  # untouched
    write_splits(tmp_path, seed=2, force=True)
    assert path.read_bytes() != first
    expected = make_splits(read_index(tmp_path), seed=2)
    assert pd.read_csv(path, dtype={"image_id": str}).equals(expected)


def test_cli_split_folds_show_test_and_refusals(tmp_path, index):
    index.to_csv(tmp_path / "index.csv", index=False)
    runner = CliRunner()
    res = runner.invoke(_app(), ["split", str(tmp_path), "--folds", "3", "--val", "0.2"])
    assert res.exit_code == 2 and "drop --val" in " ".join(res.output.split())
    assert not (tmp_path / "splits.csv").exists()
    res = runner.invoke(_app(), ["split", str(tmp_path), "--folds", "3"], env={"COLUMNS": "150"})
    assert res.exit_code == 0, res.output
    rows = [line.split("│") for line in res.output.splitlines() if line.startswith("│")]
    assert not any("-1" in cell for row in rows for cell in row)
    test_rows = [row for row in rows if row[1].strip() == "test"]
    assert len(test_rows) == 1 and test_rows[0][2].strip() == "test"  # fold "test", not -1
    res = runner.invoke(_app(), ["split", str(tmp_path), "--folds", "4"])
    assert res.exit_code == 2 and "--force" in res.output
    res = runner.invoke(_app(), ["split", str(tmp_path), "--folds", "4", "--force"])
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(tmp_path / "splits.csv")["fold"]) == {-1, 0, 1, 2, 3}


def test_small_splits_get_one_warning_line(tmp_path):
    # 12 images, 4 positive: val and test get about one image each, the test one without a positive.
    index = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(12)], "patient_id": [f"p{k}" for k in range(12)],
                          "has_pneumothorax": [int(k < 4) for k in range(12)]})
    with pytest.warns(UserWarning) as caught:
        splits = make_splits(index, val=0.1, test=0.1, seed=1)
    [line] = [str(w.message) for w in caught]
    parts = []
    for name in ("train", "val", "test"):  # every split is under 20 images; say which lack a positive
        part = index.merge(splits, on="image_id").query(f"split == '{name}'")
        n, pos = len(part), int(part["has_pneumothorax"].sum())
        no_pos = "" if pos else ", none with pneumothorax"
        parts.append(f"{name} has {n} image{'' if n == 1 else 's'} (< 20){no_pos}")
    assert line.startswith("small splits: " + "; ".join(parts) + ": metrics on fewer than 20 images"), line
    assert "no confidence interval" in line and "\n" not in line
    index.to_csv(tmp_path / "index.csv", index=False)
    res = CliRunner().invoke(_app(), ["split", str(tmp_path), "--seed", "1"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert [line for line in res.output.splitlines() if line.startswith("warning:")] == [f"warning: {line}"]


def test_large_splits_and_folds_do_not_warn(index):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_splits(index, val=0.1, test=0.1)
        make_splits(index, folds=5)
    no_positive = synthetic_index(200).assign(has_pneumothorax=0)
    with pytest.warns(UserWarning, match=r"small splits: train has \d+ images, none with pneumothorax; val has .*"
                                         r"without a positive, dice_positive, sensitivity and image_auc are undefined"):
        make_splits(no_positive, val=0.2, test=0.2)
