"""Dataset over the cache, normalisation, augmentations and the epoch samplers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pneumoseg.data.augment import apply_transform, build_transform, transforms_from_specs
from pneumoseg.data.datamodule import SegmentationDataModule
from pneumoseg.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataset,
    normalize,
    read_labels,
    split_ids,
)
from pneumoseg.data.sampler import PositiveRatioSampler, ShuffleSampler, positive_share
from pneumoseg.errors import ConfigError, DataError

INDEX_HEADER = ("image_id,patient_id,has_pneumothorax,mask_area_px,n_annotations,sex,age,view_position,"
                "source,orig_height,orig_width\n")


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
def test_normalize_gray_and_imagenet() -> None:
    img = np.array([[0, 255], [128, 64]], np.uint8)
    gray = normalize(img)
    assert gray.shape == (1, 2, 2) and gray.dtype == torch.float32
    assert gray[0, 0, 0].item() == pytest.approx(-2.0) and gray[0, 0, 1].item() == pytest.approx(2.0)
    rgb = normalize(img, in_channels=3, mode="imagenet")
    assert rgb.shape == (3, 2, 2)
    for c in range(3):
        assert rgb[c, 0, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rel=1e-5)
    batch = normalize(np.stack([img, img]), in_channels=3, mode="gray")
    assert batch.shape == (2, 3, 2, 2) and torch.equal(batch[0, 0], batch[1, 2])
    with pytest.raises(DataError, match="gray, imagenet"):
        normalize(img, mode="zscore")


# ---------------------------------------------------------------------------- dataset and splits
def test_dataset_items(cache: Path) -> None:
    ids = split_ids(cache, "train")
    assert ids == [f"id{i:02d}" for i in range(8)]
    ds = SegmentationDataset(cache, ids, size=64)
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["image_id"] == "id00" and item["label"].item() == 1.0
    assert ds[1]["mask"].sum().item() == 0 and ds[1]["label"].item() == 0.0
    assert read_labels(cache, ids).tolist() == [True, False] * 4


def test_dataset_resizes_on_the_fly(cache: Path) -> None:
    ds = SegmentationDataset(cache, ["id00"], size=32, in_channels=3, normalization="imagenet")
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
    assert item["mask"][0, 4:12, 2:10].min().item() == 1.0 and item["mask"].sum().item() == 64


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
    assert torch.equal(item["mask"][0], torch.from_numpy(mask[:, ::-1].astype(np.float32)))
    assert torch.equal(item["image"], normalize(img[:, ::-1].copy()))


@pytest.mark.parametrize("preset", ["seed", "light"])
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


def test_augment_spec_errors() -> None:
    assert build_transform("none", 64) is None
    with pytest.raises(ConfigError, match="unknown albumentations transform 'Blurr'"):
        transforms_from_specs([{"name": "Blurr"}], 64)
    with pytest.raises(ConfigError, match="not valid"):
        transforms_from_specs([{"name": "HorizontalFlip", "q": 1}], 64)
    crop = transforms_from_specs([{"name": "RandomSizedCrop", "min_max_height": ["0.5*size", "size"],
                                   "size": ["size", "size"]}], 64)[0]
    assert tuple(crop.min_max_height) == (32, 64)


# ---------------------------------------------------------------------------- samplers
def test_positive_share_decays_linearly() -> None:
    shares = [positive_share(e, 5, 0.8, 0.4) for e in range(5)]
    assert shares == pytest.approx([0.8, 0.7, 0.6, 0.5, 0.4])
    assert positive_share(0, 1, 0.8, 0.4) == 0.8


def test_positive_ratio_sampler() -> None:
    labels = np.array([True] * 20 + [False] * 80)
    sampler = PositiveRatioSampler(labels, pos_start=0.8, pos_end=0.4, epochs=3, seed=5)
    ratios = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        items = list(sampler)
        assert len(items) == len(sampler) == 100
        ratios.append(np.mean([labels[i] for i, _ in items]))
    assert ratios == pytest.approx([0.8, 0.6, 0.4])
    sampler.set_epoch(1)
    again = PositiveRatioSampler(labels, pos_start=0.8, pos_end=0.4, epochs=3, seed=5)
    again.set_epoch(1)
    assert list(sampler) == list(again)
    other = PositiveRatioSampler(labels, pos_start=0.8, pos_end=0.4, epochs=3, seed=6)
    other.set_epoch(1)
    assert list(other) != list(sampler)
    short = PositiveRatioSampler(labels, epochs=3, epoch_length=10)
    assert len(list(short)) == 10
    with pytest.raises(DataError, match="no positive"):
        PositiveRatioSampler(np.zeros(5, bool))


def test_samplers_split_disjointly_across_ranks() -> None:
    labels = np.array([True, False] * 25)
    full = PositiveRatioSampler(labels, epochs=2, seed=1, num_replicas=1, rank=0)
    parts = [list(PositiveRatioSampler(labels, epochs=2, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert {len(p) for p in parts} == {17}  # 50 padded to 51
    positions = sorted(pos for r in range(3) for pos in range(r, 51, 3))
    assert positions == list(range(51))
    merged = [parts[k % 3][k // 3] for k in range(50)]
    assert merged == list(full)
    evals = [list(ShuffleSampler(10, shuffle=False, pad=False, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for part in evals for i, _ in part) == list(range(10))


def test_datamodule_batches(cache: Path) -> None:
    dm = SegmentationDataModule(cache, size=64, batch_size=4, num_workers=0, augment={"preset": "seed"},
                                sampler={"pos_start": 1.0, "pos_end": 0.5}, epochs=2, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert batch["label"].tolist() == [1.0] * 4  # epoch 0: positives only
    val = list(dm.val_dataloader())
    assert [i for b in val for i in b["image_id"]] == ["id08", "id09"]
