"""Dataset over the cache (uint8 items, binary and soft targets), augmentations, the data module."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pneumoseg.data.augment import apply_transform, build_transform, transforms_from_specs
from pneumoseg.data.datamodule import SegmentationDataModule
from pneumoseg.data.dataset import SegmentationDataset, mask_rule, mask_to_target, read_labels, split_ids
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.io.images import resize_image
from tests.helpers.caches import INDEX_HEADER

def make_cache(root: Path, n: int = 12, size: int = 64, folds: bool = True) -> Path:
    """n images (even ones positive: a bright square), splits 8 train / 2 val / 2 test, folds 0-2."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    index, splits = [], []
    for i in range(n):
        image_id = f"id{i:02d}"
        img = rng.integers(0, 100, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if i % 2 == 0:
            mask[8:24, 4:20] = 255  # left half: a horizontal flip moves it right
            img[mask > 0] = 250
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{image_id}.png"), mask)
        area = int(mask.sum() // 255)
        index.append(f"{image_id},p{i},{int(i % 2 == 0)},{area},1,F,50,PA,x,{size},{size}\n")
        split = "test" if i >= n - 2 else "val" if i >= n - 4 else "train"
        fold = f",{-1 if split == 'test' else i % 3}" if folds else ""
        splits.append(f"{image_id},{split}{fold}\n")
    (root / "index.csv").write_text(INDEX_HEADER + "".join(index))
    (root / "splits.csv").write_text("image_id,split" + (",fold" if folds else "") + "\n" + "".join(splits))
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return make_cache(tmp_path / "cache")


# ---------------------------------------------------------------------------- normalisation
# ---------------------------------------------------------------------------- dataset and splits
def test_dataset_items(cache: Path) -> None:
    ids = split_ids(cache, "train")
    assert ids == [f"id{i:02d}" for i in range(8)]
    ds = SegmentationDataset(cache, ids, size=64)
    assert not ds.soft and mask_rule(cache) == "any"  # no cache.json: binary masks
    item = ds[0]
    _, mask = ds.load(0)
    # uint8 as stored: the model normalises on the device (one preprocessing rule, 4x fewer bytes)
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.uint8
    assert np.array_equal(item["image"][0].numpy(), cv2.imread(str(cache / "images" / "id00.png"), 0))
    assert item["mask"].shape == (1, 64, 64) and item["mask"].dtype == torch.uint8
    assert set(item["mask"].unique().tolist()) == {0, 255}
    assert torch.equal(mask_to_target(item["mask"])[0], torch.from_numpy(mask.astype(np.float32)))
    assert item["image_id"] == "id00" and item["label"].item() == 1.0
    assert ds[1]["mask"].sum().item() == 0 and ds[1]["label"].item() == 0.0
    assert read_labels(cache, ids).tolist() == [True, False] * 4


def test_dataset_resizes_on_the_fly(cache: Path) -> None:
    ds = SegmentationDataset(cache, ["id00"], size=32)
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["mask"].shape == (1, 32, 32)
    target = mask_to_target(item["mask"])
    assert target[0, 4:12, 2:10].min().item() == 1.0 and target.sum().item() == 64


def test_soft_masks_give_fractional_targets(tmp_path: Path) -> None:
    """cache.json mask_rule soft: target = png / 255 (resized by area); load() and metrics cut at 0.5."""
    cache = make_cache(tmp_path / "c", n=6)
    soft = np.zeros((64, 64), np.uint8)
    soft[8:24, 4:20] = 255
    soft[8:24, 20] = 100   # a partly covered column: 100 / 255 of each pixel
    soft[24, 4:20] = 200
    cv2.imwrite(str(cache / "masks" / "id00.png"), soft)
    (cache / "cache.json").write_text(json.dumps({"size": 64, "layout": "png", "mask_rule": "soft"}))
    ds = SegmentationDataset(cache, ["id00", "id01"], size=64)
    assert ds.soft
    item = ds[0]
    assert torch.equal(item["mask"][0], torch.from_numpy(soft))
    target = mask_to_target(item["mask"])
    assert target.dtype == torch.float32 and target[0, 10, 20].item() == pytest.approx(100 / 255)
    assert target[0, 24, 10].item() == pytest.approx(200 / 255)
    _, binary = ds.load(0)
    assert np.array_equal(binary, soft >= 128)
    half = SegmentationDataset(cache, ["id00"], size=32)[0]["mask"][0].numpy()
    assert np.array_equal(half, resize_image(soft, 32))  # soft targets average, not any-rule
    (cache / "cache.json").write_text(json.dumps({"size": 64, "mask_rule": "fraction"}))
    assert not SegmentationDataset(cache, ["id00"]).soft
    assert set(SegmentationDataset(cache, ["id00"])[0]["mask"].unique().tolist()) == {0, 255}
    (cache / "cache.json").write_text(json.dumps({"mask_rule": "blurry"}))
    with pytest.raises(DataError, match="unknown mask_rule 'blurry'"):
        SegmentationDataset(cache, ["id00"])


def test_folds(cache: Path) -> None:
    val = split_ids(cache, "val", fold=1)
    train = split_ids(cache, "train", fold=1)
    assert val and train and not set(val) & set(train)
    assert set(val) | set(train) == {f"id{i:02d}" for i in range(10)}
    assert split_ids(cache, "test", fold=1) == ["id10", "id11"]
    with pytest.raises(DataError, match=r"valid folds: \[0, 1, 2\]"):
        split_ids(cache, "val", fold=5)


def test_missing_splits_and_folds(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "c", folds=False)
    with pytest.raises(DataError, match="no fold column"):
        split_ids(cache, "val", fold=0)
    (cache / "splits.csv").unlink()
    with pytest.raises(DataError, match=r"run `pneumoseg split .*` first"):
        split_ids(cache, "train")
    with pytest.raises(DataError, match="not found"):
        split_ids(tmp_path / "nowhere", "train")


# ---------------------------------------------------------------------------- augmentations
def test_flip_keeps_mask_aligned(cache: Path) -> None:
    flip = transforms_from_specs([{"name": "HorizontalFlip", "p": 1.0}], 64)
    import albumentations as A

    ds = SegmentationDataset(cache, ["id00"], size=64, transform=A.Compose(flip))
    img, mask = ds.load(0)
    item = ds[(0, 123)]
    assert torch.equal(item["mask"][0], torch.from_numpy(mask[:, ::-1].astype(np.uint8) * 255))
    assert torch.equal(item["image"][0], torch.from_numpy(img[:, ::-1].copy()))


@pytest.mark.parametrize("preset", ["seed", "light", "winner"])
def test_presets_keep_mask_on_bright_square(preset: str) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 60, (64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:30] = True
    img[mask] = 255
    transform = build_transform(preset, 64)
    for seed in range(20):
        out_img, out_mask = apply_transform(transform, img, mask, seed)
        assert out_img.shape == (64, 64) and out_img.dtype == np.uint8 and out_mask.dtype == bool
        if out_mask.sum() > 20:  # mask pixels stay on the bright square
            assert out_img[out_mask].mean() > 150
    a = apply_transform(transform, img, mask, 7)
    b = apply_transform(transform, img, mask, 7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_winner_preset_is_the_benchmarked_spec_list() -> None:
    """small_data.yaml's ``winner`` preset draws exactly what the cross-validation ran as specs."""
    import yaml

    from benchmarks.real_small_data import WINNER_AUG

    specs = yaml.safe_load(WINNER_AUG.split("=", 1)[1])
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    preset, spelled = build_transform("winner", 64), build_transform("seed", 64, transforms=specs)
    for seed in range(12):
        a, b = apply_transform(preset, img, mask, seed), apply_transform(spelled, img, mask, seed)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_augment_spec_errors() -> None:
    assert build_transform("none", 64) is None
    with pytest.raises(ConfigError, match="unknown albumentations transform 'Blurr'"):
        transforms_from_specs([{"name": "Blurr"}], 64)
    with pytest.raises(ConfigError, match="not valid"):
        transforms_from_specs([{"name": "HorizontalFlip", "q": 1}], 64)
    crop = transforms_from_specs([{"name": "RandomSizedCrop", "min_max_height": ["0.5*size", "size"],
                                   "size": ["size", "size"]}], 64)[0]
    assert tuple(crop.min_max_height) == (32, 64)


# ---------------------------------------------------------------------------- data module
def test_datamodule_batches(cache: Path) -> None:
    dm = SegmentationDataModule(cache, size=64, batch_size=4, num_workers=0, augment={"preset": "seed"},
                                sampler={"pos_start": 1.0, "pos_end": 0.5}, epochs=2, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert batch["image"].dtype == batch["mask"].dtype == torch.uint8
    assert batch["label"].tolist() == [1.0] * 4  # epoch 0: positives only
    val = list(dm.val_dataloader())
    assert [i for b in val for i in b["image_id"]] == ["id08", "id09"]
