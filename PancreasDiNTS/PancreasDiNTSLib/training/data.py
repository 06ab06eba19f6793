"""Datalists and the training/validation data pipeline.

* ``prepare_datalist``: the released bundle's split rule (``scripts/prepare_datalist.py``): sorted
  ``labelsTr/*`` files, ``monai.utils.set_determinism(seed=123)``, sklearn ``train_test_split(train_size=196)``
  then ``train_test_split(rest, train_size=0.66)`` -> ``training``/``validation``/``testing``. With 281 MSD
  Task07 cases this gives 196/56/29, the same lists as the bundle's script.
* ``load_datalist`` / ``check_cases``: read a datalist and reject bad cases with one line naming the case
  (missing file, label values outside 0..C-1, image/label geometry mismatch, empty split).
* ``build_*_transforms``: the bundle's training chain (orientation, spacing, HU window, fp16 round-trip,
  class-balanced crops centred in dilated label maps, the listed augmentations) with the target spacing,
  patch size and crop dilation as settings.
* ``BudgetCacheDataset``: caches deterministic-transform outputs in RAM up to a byte budget (the bundle's
  ``cache_rate`` keeps a fraction of cases whatever their size); the rest is loaded each time, optionally
  from a disk cache (MONAI ``PersistentDataset``).
* ``build_loaders``: a process's training and validation loaders over its cases (train and search).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from nibabel.orientations import io_orientation

from PancreasDiNTSLib.core.atomic import write_text_atomic
from PancreasDiNTSLib.core.errors import InputError, PancreasDiNTSError, require_modules
from PancreasDiNTSLib.core.progress import Progress
from PancreasDiNTSLib.core.safeparse import MAX_DATALIST_BYTES, parse_json, read_text_bounded
from PancreasDiNTSLib.io.images import load_nifti
from PancreasDiNTSLib.training.settings import TrainSettings

if TYPE_CHECKING:
    from monai.transforms import Compose

IMAGE_KEY = "image"
LABEL_KEY = "label"
CROP_KEY = "label4crop"
BUNDLE_TRAIN_SIZE = 196
BUNDLE_VAL_FRACTION = 0.66
BUNDLE_SEED = 123
NIFTI_SUFFIXES = (".nii.gz", ".nii")


# ---------------------------------------------------------------------------------------------- datalists


def _case_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES))


def prepare_datalist(
    dataset_dir: str | Path,
    seed: int = BUNDLE_SEED,
    train_size: int | float = BUNDLE_TRAIN_SIZE,
    val_fraction: float = BUNDLE_VAL_FRACTION,
) -> dict[str, Any]:
    """Split the labelled cases of an MSD-layout folder as the bundle does; returns the datalist dict.

    Paths are relative to ``dataset_dir`` (``labelsTr/x.nii.gz``, ``imagesTr/x.nii.gz``), as in the bundle's
    ``dataset_0.json``. When there are not more than ``train_size`` cases (e.g. a phantom set), the bundle's
    proportion 196/281 is used instead of the count. ``imagesTs`` holds no labels and is not part of any split.
    """
    require_modules("the bundle's split (prepare-datalist)", ("sklearn",), "pip install 'PancreasDiNTSLib[train]'")
    from monai.utils import set_determinism
    from sklearn.model_selection import train_test_split

    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found (expected the MSD Task07 layout with labelsTr/)")
    labels = _case_files(root / "labelsTr")
    if not labels:
        raise InputError(f"{root / 'labelsTr'}: no .nii/.nii.gz label files; is this an MSD Task07-layout folder?")
    items = []
    for lab in labels:
        img = root / "imagesTr" / lab.name
        if not img.is_file():
            raise InputError(f"{lab.name}: label {lab} has no image {img}; restore the image or remove the label")
        items.append({"label": f"labelsTr/{lab.name}", "image": f"imagesTr/{lab.name}"})
    n = len(items)
    if n < 3:
        raise InputError(f"{root}: {n} labelled case(s); need at least 3 for training/validation/testing splits")
    note = None
    if isinstance(train_size, int) and train_size >= n:
        ratio = BUNDLE_TRAIN_SIZE / 281.0
        note = f"{n} cases <= train_size {train_size}: using the bundle's proportion {ratio:.4f} instead"
        train_size = ratio
    set_determinism(seed=seed)
    try:
        train, other = train_test_split(items, train_size=train_size)
        val, test = train_test_split(other, train_size=val_fraction) if len(other) > 1 else (other, [])
    except ValueError as exc:
        raise InputError(f"{root}: cannot split {n} cases with train_size={train_size}: {exc}") from None
    finally:
        set_determinism(seed=None)
    out: dict[str, Any] = {"training": train, "validation": val, "testing": test}
    out["dataset_dir"] = str(root.resolve())
    out["split"] = {"rule": "bundle scripts/prepare_datalist.py", "seed": seed, "train_size": train_size,
                    "val_fraction": val_fraction, "counts": [len(train), len(val), len(test)]}
    if note:
        out["split"]["note"] = note
    return out


def write_datalist(datalist: dict[str, Any], path: str | Path) -> None:
    write_text_atomic(Path(path), json.dumps(datalist, indent=4) + "\n")


def read_datalist_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: datalist not found; create one with `pancreas-dints prepare-datalist`")
    # bounded (64 MiB, 64 levels deep): a hostile datalist is one InputError line, never a RecursionError
    data = parse_json(read_text_bounded(path, MAX_DATALIST_BYTES, InputError), path, error=InputError)
    if not isinstance(data, dict):
        raise InputError(f"{path}: a datalist is a JSON object with training/validation/testing lists")
    return data


def case_id(item: Mapping[str, Any]) -> str:
    """A short case name for messages: the image file name without suffix."""
    name = Path(str(item.get(IMAGE_KEY, item.get(LABEL_KEY, "?")))).name
    for suffix in NIFTI_SUFFIXES + (".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_datalist(
    path: str | Path,
    key: str = "training",
    base_dir: str | Path | None = None,
    need_labels: bool = True,
    allow_empty: bool = False,
) -> list[dict[str, str]]:
    """Items of one split with absolute paths; InputError for an empty split or a missing file.

    The base folder is ``base_dir`` (a relative one from the working folder, as any command-line path), else the
    datalist's ``dataset_dir`` entry (a relative one from the datalist's folder), else the datalist's folder.
    Items may be dicts ``{"image", "label"}`` or plain image paths (as in the MSD ``test`` list).
    """
    path = Path(path).resolve()  # resolved once: every relative path below is taken from an absolute folder
    data = read_datalist_json(path)
    if key not in data:
        raise InputError(f"{path}: no {key!r} split (has: {', '.join(k for k in data if isinstance(data[k], list))})")
    raw = data[key]
    if not isinstance(raw, list):
        raise InputError(f"{path}: {key!r} must be a list of cases")
    if not raw and not allow_empty:
        raise InputError(f"{path}: the {key!r} split is empty; regenerate it with `pancreas-dints prepare-datalist`")
    base = Path(base_dir).resolve() if base_dir else (path.parent / str(data.get("dataset_dir") or ".")).resolve()
    items: list[dict[str, str]] = []
    for i, entry in enumerate(raw):
        entry = {IMAGE_KEY: entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or IMAGE_KEY not in entry:
            raise InputError(f"{path}: {key}[{i}] has no 'image' entry")
        item = {}
        for k in (IMAGE_KEY, LABEL_KEY):
            if k not in entry:
                continue
            p = Path(str(entry[k]))
            item[k] = str(p if p.is_absolute() else (base / p).resolve())
        name = case_id(item)
        if need_labels and LABEL_KEY not in item:
            raise InputError(f"{name}: {key}[{i}] in {path} has no 'label' entry")
        for k, v in item.items():
            if not Path(v).is_file():
                raise InputError(f"{name}: {k} file {v} not found (datalist {path}, base folder {base}); "
                                 "fix the path or pass --dataset-dir")
        items.append(item)
    return items


def load_training_cases(path: str | Path, settings: TrainSettings,
                        base_dir: str | Path | None = None) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(training, validation) cases of a datalist, checked; at most ``settings.max_train_cases`` training cases."""
    train_items = load_datalist(path, "training", base_dir=base_dir)
    if settings.max_train_cases:
        train_items = train_items[: settings.max_train_cases]
    val_items = load_datalist(path, "validation", base_dir=base_dir, allow_empty=True)
    check_cases(train_items + val_items, num_classes=settings.num_classes)
    return train_items, val_items


def check_cases(items: Sequence[Mapping[str, str]], num_classes: int = 3, check_labels: bool = True,
                progress: Progress | None = None) -> None:
    """Reject a case whose label does not match its image's grid or has values outside 0..num_classes-1.

    Reads headers of both files (fast) and, with ``check_labels``, the label voxels.
    """
    for i, item in enumerate(items):
        if LABEL_KEY not in item:
            continue
        name = case_id(item)
        if progress is not None:
            progress.update(name, "check", i / max(1, len(items)))
        try:
            img, lab = load_nifti(item[IMAGE_KEY]), load_nifti(item[LABEL_KEY])
        except Exception as exc:  # nibabel raises several types for unreadable files
            raise InputError(f"{name}: cannot read {item[IMAGE_KEY]} / {item[LABEL_KEY]} as NIfTI "
                             f"({str(exc).splitlines()[0][:200]})") from None
        if img.shape[:3] != lab.shape[:3]:
            raise InputError(f"{name}: label {item[LABEL_KEY]} has shape {lab.shape[:3]} but image "
                             f"{item[IMAGE_KEY]} has {img.shape[:3]}; the label must be on the image's grid")
        if not np.allclose(img.affine, lab.affine, atol=1e-2):
            raise InputError(f"{name}: label {item[LABEL_KEY]} and image {item[IMAGE_KEY]} have different "
                             "affines (voxel-to-world geometry); resample the label onto the image grid")
        if check_labels:
            values = np.unique(np.asanyarray(lab.dataobj))
            bad = [v for v in values.tolist() if v not in range(num_classes)]
            if bad:
                shown = ", ".join(f"{v:g}" for v in bad[:5])
                raise InputError(f"{name}: label {item[LABEL_KEY]} has value(s) {shown}; allowed are 0 "
                                 f"(background), 1 (pancreas), 2 (tumour)" if num_classes == 3 else
                                 f"{name}: label {item[LABEL_KEY]} has value(s) {shown} >= {num_classes} classes")


# ---------------------------------------------------------------------------------------------- transforms


class DilatedClassMapsd:
    """``label4crop``: one channel per class, the class mask dilated by ``iterations`` 6-connected steps.

    Same maps as the bundle's ``ndimage.binary_dilation(x == k, iterations=48)`` per class (a dilation by n steps
    of the 6-neighbour cross is the set of voxels within city-block distance n), computed with one distance
    transform per class and stored as uint8 instead of float64.
    """

    def __init__(self, label_key: str = LABEL_KEY, out_key: str = CROP_KEY, num_classes: int = 3,
                 iterations: int = 48) -> None:
        self.label_key, self.out_key = label_key, out_key
        self.num_classes, self.iterations = num_classes, int(iterations)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from scipy import ndimage

        d = dict(data)
        lab = d[self.label_key]
        arr = np.asarray(lab.detach().cpu().numpy() if isinstance(lab, torch.Tensor) else lab)[0]
        maps = np.zeros((self.num_classes,) + arr.shape, dtype=np.uint8)
        for k in range(self.num_classes):
            mask = arr == k
            if not mask.any():
                continue
            if self.iterations <= 0:
                maps[k] = mask
            else:
                dist = ndimage.distance_transform_cdt(~mask, metric="taxicab")
                maps[k] = dist <= self.iterations
        d[self.out_key] = torch.from_numpy(maps)
        return d


class Cloned:
    """Copy tensors of a (cropped) sample so that later transforms never write into the cached volume."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for k in self.keys:
            if isinstance(d.get(k), torch.Tensor):
                d[k] = d[k].clone()
        return d


class PadToPatchd:
    """SpatialPadd to the patch size, in steps, so that reflect padding also works on volumes smaller than half
    the patch (torch's reflect pad needs pad < size; the bundle's single SpatialPadd fails there)."""

    def __init__(self, keys: Sequence[str], spatial_size: Sequence[int], mode: Sequence[str]) -> None:
        self.keys, self.spatial_size, self.mode = list(keys), [int(s) for s in spatial_size], list(mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.transforms import SpatialPadd

        d = dict(data)
        while True:
            shape = list(d[self.keys[0]].shape[1:])
            if all(s >= p for s, p in zip(shape, self.spatial_size, strict=True)):
                return d
            target = [max(s, min(p, 2 * s - 1)) for s, p in zip(shape, self.spatial_size, strict=True)]
            d = SpatialPadd(keys=self.keys, spatial_size=target, mode=self.mode)(d)


def _loading_transforms(settings: TrainSettings, keys: list[str]) -> list[Any]:
    from monai.transforms import (
        CastToTyped,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    modes = ["bilinear", "nearest"][: len(keys)]
    return [
        LoadImaged(keys=keys, image_only=False),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS"),
        Spacingd(keys=keys, pixdim=tuple(settings.spacing), mode=modes, align_corners=[True] * len(keys)),
        CastToTyped(keys=IMAGE_KEY, dtype=torch.float32),
        ScaleIntensityRanged(keys=IMAGE_KEY, a_min=settings.a_min, a_max=settings.a_max, b_min=0.0, b_max=1.0,
                             clip=True),
        # the bundle's fp16 round-trip of the image (and uint8 labels)
        CastToTyped(keys=keys, dtype=[np.float16, np.uint8][: len(keys)]),
    ]


def crop_dilation(settings: TrainSettings) -> int:
    """Dilation steps for the crop maps: the setting, or half the patch (48 for the bundle's 96^3 patch)."""
    if settings.crop_dilation is not None and settings.crop_dilation >= 0:
        return int(settings.crop_dilation)
    return int(min(settings.patch_size)) // 2


def build_deterministic_transforms(settings: TrainSettings) -> Compose:
    """Cached part of the training chain: load .. spacing .. window .. crop maps .. pad to the patch."""
    from monai.transforms import CastToTyped, Compose, EnsureTyped

    keys = [IMAGE_KEY, LABEL_KEY]
    return Compose(_loading_transforms(settings, keys) + [
        CastToTyped(keys=IMAGE_KEY, dtype=torch.float32),
        DilatedClassMapsd(num_classes=settings.num_classes, iterations=crop_dilation(settings)),
        EnsureTyped(keys=keys),
        PadToPatchd(keys=keys + [CROP_KEY], spatial_size=tuple(settings.patch_size),
                    mode=["reflect", "constant", "constant"]),
        CastToTyped(keys=IMAGE_KEY, dtype=torch.float16),  # RAM: cache the image as fp16 (exact after the round-trip)
    ])


def build_random_transforms(settings: TrainSettings) -> Compose:
    """Per-sample part: class-balanced crop, then the bundle's augmentations (if ``settings.augment``)."""
    from monai.transforms import (
        CastToTyped,
        Compose,
        DeleteItemsd,
        RandCropByLabelClassesd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandZoomd,
        ToTensord,
    )

    keys = [IMAGE_KEY, LABEL_KEY]
    chain: list[Any] = [
        RandCropByLabelClassesd(keys=keys, label_key=CROP_KEY, num_classes=settings.num_classes,
                                ratios=[1] * settings.num_classes, spatial_size=tuple(settings.patch_size),
                                num_samples=settings.num_samples, warn=False),
        DeleteItemsd(keys=CROP_KEY),
        Cloned(keys),
        CastToTyped(keys=IMAGE_KEY, dtype=torch.float32),  # crop first: only the patch is converted
    ]
    if settings.augment:
        chain += [
            RandRotated(keys=keys, range_x=0.3, range_y=0.3, range_z=0.3, mode=["bilinear", "nearest"], prob=0.2),
            RandZoomd(keys=keys, min_zoom=0.8, max_zoom=1.2, mode=["trilinear", "nearest"],
                      align_corners=[True, None], prob=0.16),
            RandGaussianSmoothd(keys=IMAGE_KEY, sigma_x=(0.5, 1.15), sigma_y=(0.5, 1.15), sigma_z=(0.5, 1.15),
                                prob=0.15),
            RandScaleIntensityd(keys=IMAGE_KEY, factors=0.3, prob=0.5),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=0.1, prob=0.5),
            RandGaussianNoised(keys=IMAGE_KEY, std=0.01, prob=0.15),
            RandFlipd(keys=keys, spatial_axis=0, prob=0.5),
            RandFlipd(keys=keys, spatial_axis=1, prob=0.5),
            RandFlipd(keys=keys, spatial_axis=2, prob=0.5),
        ]
    chain += [CastToTyped(keys=keys, dtype=[torch.float32, torch.uint8]), ToTensord(keys=keys, track_meta=False)]
    return Compose(chain)


def build_val_transforms(settings: TrainSettings) -> Compose:
    """Validation chain (cached part): as training without the crop maps; image padded to the patch."""
    from monai.transforms import Compose, EnsureTyped

    keys = [IMAGE_KEY, LABEL_KEY]
    return Compose(_loading_transforms(settings, keys) + [
        EnsureTyped(keys=keys),
        PadToPatchd(keys=keys, spatial_size=tuple(settings.patch_size), mode=["reflect", "constant"]),
    ])


def build_val_post_transforms() -> Compose:
    """Per-sample part of validation: the cached fp16 image back to float32."""
    from monai.transforms import CastToTyped, Compose

    return Compose([CastToTyped(keys=[IMAGE_KEY, LABEL_KEY], dtype=[torch.float32, torch.uint8])])


# ---------------------------------------------------------------------------------------------- caching


def resampled_shape(path: str, spacing: Sequence[float]) -> tuple[int, ...]:
    """Grid size after Spacingd to ``spacing`` (axis order after RAS orientation), from the NIfTI header."""
    img = load_nifti(path)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    order = io_orientation(img.affine)[:, 0].astype(int)  # world axis of each voxel axis
    shape = [0, 0, 0]
    for ax in range(3):
        n, s = img.shape[ax], float(zooms[ax])
        shape[order[ax]] = int(round((n - 1) * s / float(spacing[order[ax]]) + 1))
    return tuple(shape)


def estimate_case_bytes(item: Mapping[str, str], settings: TrainSettings, train: bool = True) -> int:
    """RAM of one cached case: fp16 image + uint8 label (+ uint8 crop maps per class when training)."""
    shape = resampled_shape(item[IMAGE_KEY], settings.spacing)
    vox = int(np.prod([max(s, p) for s, p in zip(shape, settings.patch_size, strict=True)]))
    per_voxel = 2 + 1 + (settings.num_classes if train else 0)
    return vox * per_voxel


def sample_nbytes(sample: Any) -> int:
    if isinstance(sample, torch.Tensor):
        return sample.element_size() * sample.nelement()
    if isinstance(sample, np.ndarray):
        return int(sample.nbytes)
    if isinstance(sample, Mapping):
        return sum(sample_nbytes(v) for v in sample.values())
    if isinstance(sample, (list, tuple)):
        return sum(sample_nbytes(v) for v in sample)
    return 0


def unwrap_error(exc: BaseException, item: Mapping[str, str]) -> BaseException:
    """The PancreasDiNTSError inside a MONAI transform error chain, or an InputError naming the case."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PancreasDiNTSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    msg = str(root).splitlines()[0][:240] if str(root) else type(root).__name__
    return InputError(f"{case_id(item)}: cannot be loaded/preprocessed ({item.get(IMAGE_KEY)}): {msg}")


class BudgetCacheDataset(torch.utils.data.Dataset):
    """Deterministic transforms cached in RAM for as many cases as fit in ``cache_bytes``.

    Cases are taken in order while their estimated size (from the NIfTI header) fits the budget; the cache is
    filled in the main process before DataLoader workers fork, so workers share it copy-on-write. Cases outside
    the budget run the deterministic transforms on each access, or read them from ``cache_dir`` (a MONAI
    PersistentDataset) when given. ``post`` (random crop and augmentation, or a cast) runs on every access.
    """

    def __init__(self, data: Sequence[Mapping[str, str]], deterministic: Callable[..., Any],
                 post: Callable[..., Any] | None = None, cache_bytes: int = 0, cache_dir: str | Path | None = None,
                 estimate: Callable[[Mapping[str, str]], int] | None = None, progress: Progress | None = None,
                 what: str = "cache") -> None:
        from monai.data import Dataset, PersistentDataset

        self.data = [dict(d) for d in data]
        self.post = post
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self.base: Any = PersistentDataset(self.data, transform=deterministic, cache_dir=str(cache_dir))
        else:
            self.base = Dataset(self.data, transform=deterministic)
        self.cache: dict[int, Any] = {}
        self.cached_bytes = 0
        budget = int(cache_bytes)
        for i, item in enumerate(self.data):
            if budget <= 0:
                break
            est = int(estimate(item)) if estimate is not None else 0
            if self.cached_bytes + est > budget:
                continue
            if progress is not None:
                progress.update(case_id(item), what, i / max(1, len(self.data)), f"{self.cached_bytes / 2**20:.0f} MiB")
            sample = self._load(i)
            size = sample_nbytes(sample)
            if self.cached_bytes + size > budget:
                continue
            self.cache[i] = sample
            self.cached_bytes += size

    def _load(self, index: int) -> Any:
        try:
            return self.base[index]
        except Exception as exc:
            raise unwrap_error(exc, self.data[index]) from None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        sample = self.cache.get(index)
        if sample is None:
            sample = self._load(index)
        else:
            sample = dict(sample)  # the post chain never writes into cached tensors (crop + Cloned)
        if self.post is None:
            return sample
        from monai.transforms import apply_transform

        try:
            return apply_transform(self.post, sample)
        except Exception as exc:
            raise unwrap_error(exc, self.data[index]) from None


# ---------------------------------------------------------------------------------------------- loaders


def cached_dataset(items: Sequence[Mapping[str, str]], settings: TrainSettings, train: bool,
                   cache_bytes: int) -> BudgetCacheDataset:
    """Training cases (random crops + augmentation) or validation cases (whole volumes), cached up to a budget."""
    if train:
        deterministic, post = build_deterministic_transforms(settings), build_random_transforms(settings)
    else:
        deterministic, post = build_val_transforms(settings), build_val_post_transforms()
    folder = "train" if train else "val"
    return BudgetCacheDataset(
        items, deterministic, post, cache_bytes=cache_bytes,
        cache_dir=Path(settings.cache_dir) / folder if settings.cache_dir else None,
        estimate=lambda it: estimate_case_bytes(it, settings, train=train), what=f"cache {folder}")


def build_loaders(train_items: Sequence[Mapping[str, str]], val_items: Sequence[Mapping[str, str]],
                  settings: TrainSettings, cache_bytes: int,
                  with_validation: bool) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
    """(training loader, validation loader or None) over this process's cases; training cases are cached first.

    ``with_validation`` gives a validation loader even for no case (a rank without validation cases still joins
    the all-reduce of the Dice sums under DDP). MONAI's DataLoader: it seeds the random transforms in workers.
    """
    from monai.data import DataLoader

    train_ds = cached_dataset(train_items, settings, True, cache_bytes)
    workers = int(settings.num_workers)
    train_loader = DataLoader(train_ds, batch_size=settings.batch_size, shuffle=True, num_workers=workers,
                              drop_last=False)
    if not with_validation:
        return train_loader, None
    val_ds = cached_dataset(val_items, settings, False, max(0, cache_bytes - train_ds.cached_bytes))
    return train_loader, DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=min(workers, 2))
