"""``pneumoseg.io.layouts``: one rule for which files are DICOM, used by every command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoseg.data.explore import explore
from pneumoseg.data.prepare import prepare_dicom
from pneumoseg.errors import DataError
from pneumoseg.inference.inputs import find_inputs, load_input
from pneumoseg.io.layouts import DICOM_SUFFIXES, find_dicoms, is_dicom_name, iter_files
from pneumoseg.service.browse import BrowseFolder
from tests.helpers.dicom import write_dicom


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(32, 40), dtype=np.uint8)


@pytest.fixture()
def dicom_names(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """One folder holding ``.dcm``, ``.dicom`` and ``.DICOM`` files (and a file that is none)."""
    root = tmp_path / "in"
    uids = {name: write_dicom(root / name, _image(i))
            for i, name in enumerate(("a.dcm", "sub/b.dicom", "C.DICOM"))}
    (root / "notes.dicom.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "notes.dicom.txt").write_text("not a DICOM")
    return root, uids


@pytest.mark.parametrize(("name", "expected"), [("a.dcm", True), ("a.DCM", True), ("a.dicom", True),
                                                ("b.Dicom", True), ("a.png", False), ("a.dicom.txt", False),
                                                ("dcm", False), (".dicom", False)])
def test_is_dicom_name(name: str, expected: bool) -> None:
    assert is_dicom_name(name) is expected
    assert DICOM_SUFFIXES == (".dcm", ".dicom")


def test_walk_is_sorted_like_rglob_and_refuses_a_missing_folder(dicom_names: tuple[Path, dict[str, str]],
                                                                tmp_path: Path) -> None:
    root, uids = dicom_names
    expected = sorted(root / n for n in uids)
    assert list(iter_files(root, DICOM_SUFFIXES)) == find_dicoms(root) == expected
    with pytest.raises(DataError, match=r"no \.dcm files or \.dicom files found"):
        find_dicoms(_empty(tmp_path))
    with pytest.raises(DataError, match="DICOM folder not found"):
        find_dicoms(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_every_command_finds_dicom_files(dicom_names: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, uids = dicom_names
    ids = set(uids.values())
    csv = tmp_path / "rle.csv"
    csv.write_text("ImageId, EncodedPixels\n" + "".join(f"{uid}, -1\n" for uid in sorted(ids)))
    summary = explore(root, csv, tmp_path / "explored", n_samples=0, progress=False)
    assert summary["n_images"] == 3 and summary["failures"] == []
    assert set(pd.read_csv(tmp_path / "explored" / "metadata.csv")["image_id"]) == ids

    result = prepare_dicom(root, csv, tmp_path / "cache", size=128, workers=1, progress=False)
    assert result.n_done == 3 and result.failures == []
    assert set(pd.read_csv(result.index_path)["image_id"]) == ids

    inputs = find_inputs(root)
    assert inputs == sorted(root / n for n in uids)
    assert {load_input(p).image_id for p in inputs} == ids  # read as DICOM: ImageId = SOPInstanceUID

    assert set(BrowseFolder(root).names) == set(uids)


# ------------------------------------------------------------------ the PNG layout


def test_one_positivity_rule_for_layout_masks(tmp_path: Path) -> None:
    from PIL import Image

    from pneumoseg.io.layouts import read_layout_mask

    region = np.zeros((12, 16), dtype=bool)
    region[2:6, 3:9] = True
    for name, stored in (("zero_one", region.astype(np.uint8)), ("zero_255", region.astype(np.uint8) * 255),
                         ("edge", np.where(region, 200, 0).astype(np.uint8) + (~region) * 100)):
        Image.fromarray(stored.astype(np.uint8)).save(tmp_path / f"{name}.png")
        np.testing.assert_array_equal(read_layout_mask(tmp_path / f"{name}.png", (12, 16)), region)
    with pytest.raises(DataError, match=r"mask .*zero_one\.png is 12x16 but image x\.png is 12x12"):
        read_layout_mask(tmp_path / "zero_one.png", (12, 12), "x.png")


def test_png_pairs_by_stem(tmp_path: Path) -> None:
    from PIL import Image

    from pneumoseg.io.layouts import find_png_pairs

    for rel in ("images/a.png", "images/b.JPG", "images/-bad.png", "masks/a.png", "masks/lonely.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / rel, format="PNG")
    pairs = find_png_pairs(tmp_path)
    assert pairs.images == {"a": tmp_path / "images" / "a.png", "b": tmp_path / "images" / "b.JPG"}
    assert pairs.masks == {"a": tmp_path / "masks" / "a.png"} and pairs.orphans == ["lonely"]
    assert len(pairs.failures) == 1 and "-bad.png" in pairs.failures[0]
    with pytest.raises(DataError, match="no images/ folder"):
        find_png_pairs(tmp_path / "masks")


# ------------------------------------------------------------------ label matching


@pytest.mark.parametrize(("stem", "uid", "labelled", "expected"), [
    ("f", "1.2.3", {"1.2.3", "f"}, ("1.2.3", "uid")),   # the UID wins over the stem
    ("f", "1.2.3", {"f"}, ("f", "stem")),
    ("f", "1.2.3", set(), ("1.2.3", "none")),
    ("f", None, {"f"}, ("f", "stem")),                   # PNG / JPEG: the stem only
    ("f", None, set(), ("f", "none")),
])
def test_match_label_uid_then_stem(stem: str, uid: str | None, labelled: set[str],
                                   expected: tuple[str, str]) -> None:
    from pneumoseg.io.layouts import match_label

    assert match_label(stem, labelled, uid) == expected


def test_prepare_evaluate_and_browse_match_labels_alike(tmp_path: Path) -> None:
    """A DICOM labelled under its file stem (not its UID) and one labelled under its UID."""
    from pneumoseg.evaluation.external import read_labelled_set
    from pneumoseg.io.rle import rle_encode

    root = tmp_path / "in"
    by_uid = write_dicom(root / "x.dcm", _image(0))
    write_dicom(root / "named.dicom", _image(1))
    mask = np.zeros((32, 40), dtype=bool)
    mask[4:9, 5:20] = True
    csv = tmp_path / "rle.csv"
    csv.write_text(f"ImageId, EncodedPixels\n{by_uid}, -1\nnamed, {rle_encode(mask)}\n")

    result = prepare_dicom(root, csv, tmp_path / "cache", size=128, workers=1, progress=False)
    index = pd.read_csv(result.index_path).set_index("image_id")
    assert index.loc["named", "matched_by"] == "stem" and index.loc[by_uid, "matched_by"] == "uid"

    labelled = read_labelled_set(root, rle=csv)
    ids = {labelled.load(p).image_id for p in labelled.files}
    assert ids == {"named", by_uid} and labelled.matched_by == {"uid": 1, "stem": 1}

    folder = BrowseFolder(root, truth_csv=csv)
    found = folder.truth("named.dicom", load_input(root / "named.dicom"))
    assert found is not None and int(found[0].sum()) == int(mask.sum())
