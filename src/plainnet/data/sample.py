"""The built-in sample: 2,000 training and 1,000 test CIFAR-10 images shipped with plainnet.

It makes every command runnable offline, with nothing to download (a smoke test, a demo, CI).
The file holds JPEG bytes, not pixels (about 2.8 MB rather than 9 MB), written by
`tools/make_sample.py`, whose docstring describes the layout; it is read with
``allow_pickle=False``, so loading it never executes code. Decoding takes well under a second.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

from plainnet.data.cifar import SIDE, Splits
from plainnet.data.folder import decode_image
from plainnet.errors import UserError, one_line

FORMAT = "plainnet-sample-v1"  # what tools/make_sample.py writes
#: The packaged file, found the same way in a wheel or an editable install (a Traversable: a
#: Path in an ordinary install); tests point it at a damaged copy.
SAMPLE_FILE = resources.files("plainnet.data") / "sample.npz"
_FIX = "reinstall plainnet"
_SPLIT_KEYS = ("jpeg", "offsets", "labels")  # each split's arrays: {split}_{key}


def load_sample() -> Splits:
    """The sample as uint8 (N, 3, 32, 32) images and int64 labels (classes: CIFAR-10's).

    A missing, truncated or otherwise damaged file is a one-line `UserError` naming it.
    """
    path = SAMPLE_FILE
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except OSError as e:
        raise UserError(
            f"{path}: cannot read the built-in sample ({one_line(e)}): {_FIX}"
        ) from None
    except Exception as e:  # not a zip, a damaged member, a bad .npy header, an object array
        raise UserError(f"{path}: the built-in sample is damaged ({one_line(e)}): {_FIX}") from None
    problem = _check(arrays)
    if problem:
        raise UserError(f"{path}: the built-in sample is damaged ({problem}): {_FIX}")
    return Splits(
        train_images=_decode_split(arrays, "train", path),
        train_labels=arrays["train_labels"],
        test_images=_decode_split(arrays, "test", path),
        test_labels=arrays["test_labels"],
        classes=[str(c) for c in arrays["classes"]],
    )


def _check(a: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the arrays read from the file, or None if they fit the layout."""
    names = ["format", "classes"] + [f"{s}_{k}" for s in ("train", "test") for k in _SPLIT_KEYS]
    if missing := [k for k in names if k not in a]:
        return f"no {', '.join(missing)}"
    fmt, classes = a["format"], a["classes"]
    if fmt.dtype.kind != "U" or fmt.shape != () or str(fmt) != FORMAT:
        return f"format is not {FORMAT}"
    if classes.dtype.kind != "U" or classes.ndim != 1 or len(set(classes.tolist())) < 2:
        return "classes is not a list of distinct names"
    for split in ("train", "test"):
        jpeg, offsets, labels = (a[f"{split}_{k}"] for k in _SPLIT_KEYS)
        if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
            return f"{split}_jpeg is not a uint8 vector"
        if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 2:
            return f"{split}_offsets is not an int64 vector of at least 2"
        if offsets[0] != 0 or offsets[-1] != len(jpeg) or np.any(np.diff(offsets) <= 0):
            return f"{split}_offsets do not cut {split}_jpeg into non-empty images"
        if labels.dtype != np.int64 or labels.shape != (len(offsets) - 1,):
            return f"{split}_labels is not an int64 vector of one label per image"
        if labels.min() < 0 or labels.max() >= len(classes):
            return f"{split}_labels has labels outside [0, {len(classes)})"
    return None


def _decode_split(a: dict[str, np.ndarray], split: str, path: object) -> np.ndarray:
    """The JPEGs of one split decoded into uint8 (N, 3, SIDE, SIDE)."""
    jpeg, offsets = a[f"{split}_jpeg"], a[f"{split}_offsets"].tolist()
    out = np.empty((len(offsets) - 1, 3, SIDE, SIDE), dtype=np.uint8)
    for i in range(len(out)):
        data = jpeg[offsets[i] : offsets[i + 1]].tobytes()
        try:
            out[i] = decode_image(f"{path} ({split} image {i})", data, (SIDE, SIDE)).transpose(
                2, 0, 1
            )
        except UserError as e:
            raise UserError(f"{e}: {_FIX}") from None
    return out
