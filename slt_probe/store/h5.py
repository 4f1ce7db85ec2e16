"""What every HDF5 file of the package shares: string datasets, attributes (JSON where not a string or number),
timestamps, the versions in use, and replacing one group of a file atomically."""

from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from slt_probe.store.atomic import atomic_path
from slt_probe.store.lock import WriterLock

STR = h5py.string_dtype()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("slt-probe", "torch", "devinterp", "numpy", "h5py"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def encode_attr(value: Any) -> Any:
    """An attribute as stored: strings and numbers as they are, anything else as JSON."""
    return value if isinstance(value, (str, int, float)) else json.dumps(value)


def decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value




def write_group(path: Path, name: str, fill: Callable[[h5py.Group], None]) -> None:
    """Replace group `name` of an existing results file, atomically: fill(group) writes its contents."""
    with WriterLock(path), atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            if name in f:
                del f[name]
            fill(f.create_group(name))
            f.attrs["updated"] = utc_now()
