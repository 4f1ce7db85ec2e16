"""The demo's corpus: the CPython standard library's own source, as bytes (vocab 256), with copied spans mixed in.

Every Python install ships its standard library as .py files, so the corpus is real text that needs no
download and no tokenizer: one token per byte. Files are located at run time with sysconfig, split into
train and validation by a hash of each file's path relative to the library root (so a file is always on
the same side, whatever else is installed, and no file is on both), and the two byte streams are cached
as .npy files keyed by a hash of the file list and the Python version.

Plain text alone does not make induction heads form in minutes at laptop scale (previous-token heads do,
in a few hundred steps; induction heads had not within 12k steps). windows() therefore mixes in-context
repetition into a fraction of the training windows: a span of the window is copied to a later place in
the same window, so the tokens after the copy's first token are predictable by looking back for the
earlier occurrence and reading what followed it, which is exactly what an induction head does.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from slt_probe.store import atomic_path

FORMAT = 1  # bump when the layout of the cached streams changes, so stale caches are not reused
SEPARATOR = 0  # byte between files: NUL never occurs in source text, so it marks "a new document"
# Folders left out of the corpus: the test suites are absent from many distribution installs (Debian ships
# them as a separate package), so including them would make the corpus differ between installs of the same
# Python; they also hold large generated data files that are not representative source. site-packages is
# whatever the user installed, not the standard library.
EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass
class CorpusConfig:
    # the defaults are the demo's (measured: /tmp/demo_exp/log.md of its development; see train.py)
    context: int = 32  # tokens the model sees per window; windows hold context + 1 (inputs and targets)
    # fraction of windows with a copied span: at 0.5 induction heads had not formed in 12k steps, at 0.55 they
    # form around step 3-6k, well after the previous-token heads (~300-700); at 0.75-1.0 the two form together
    repeat_frac: float = 0.55
    span_min: int = 8  # length of a copied span, drawn uniformly in [span_min, span_max]
    span_max: int = 16
    seed: int = 0
    val_frac: float = 0.1  # fraction of files (by hash of their path) held out for validation
    # cap on the corpus, taken in a deterministic pseudo-random order of files; 16 MB holds all of a 3.11
    # standard library without its tests (~12 MB), and a demo run reads ~12M tokens, less than one epoch
    max_bytes: int = 16_000_000
    cache_dir: Optional[str] = None  # None: $SLT_PROBE_CACHE, else ~/.cache/slt-probe

    def __post_init__(self):
        if self.context < 2:
            raise ValueError(f"context must be >= 2, got {self.context}")
        if not 0.0 <= self.repeat_frac <= 1.0:
            raise ValueError(f"repeat_frac must be in [0, 1], got {self.repeat_frac}")
        if not 1 <= self.span_min <= self.span_max or 2 * self.span_max > self.context + 1:
            raise ValueError(f"need 1 <= span_min <= span_max and 2 * span_max <= context + 1 (a span and its "
                             f"copy fit in one window), got {self.span_min}, {self.span_max}, context {self.context}")
        if not 0.0 < self.val_frac < 1.0:
            raise ValueError(f"val_frac must be in (0, 1), got {self.val_frac}")


@dataclass
class Corpus:
    train: np.ndarray  # [N_train] uint8, the training files' bytes, each file followed by SEPARATOR
    val: np.ndarray  # [N_val] uint8, the same for the validation files
    train_files: list[str] = field(default_factory=list)  # paths relative to the library root, in stream order
    val_files: list[str] = field(default_factory=list)
    root: str = ""  # the standard library folder read
    key: str = ""  # the cache key: hash of the file list (paths and sizes), the Python version and the split
    cache_hit: bool = False  # whether the streams came from the cache


# ----------------------------------------------------------------------------------------------------------
# the files


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Union[Path, str, None] = None) -> list[str]:
    """The .py files of the standard library, as sorted POSIX paths relative to `root` (default: stdlib).

    Test suites and site-packages are left out (see EXCLUDED_DIRS). Symlinked folders are not followed, so a
    library that links elsewhere cannot pull in a second copy of itself.
    """
    root = Path(root) if root is not None else stdlib_root()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]
        files += [(Path(folder) / n).relative_to(root).as_posix() for n in names if n.endswith(".py")]
    return sorted(files)


def _path_hash(rel: str) -> int:
    """A stable 64-bit hash of a relative path: the same on every machine, unlike Python's hash()."""
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")


def is_validation(rel: str, val_frac: float) -> bool:
    """Whether a file belongs to the validation split: decided by its path alone."""
    return _path_hash(rel) / 2.0**64 < val_frac


def _cache_dir(cfg: CorpusConfig) -> Path:
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir)
    env = os.environ.get("SLT_PROBE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "slt-probe"


def _cache_key(root: Path, files: Sequence[str], cfg: CorpusConfig) -> str:
    # sizes, not contents: hashing the contents would cost as much as reading them, and a changed file in
    # an installed standard library almost always changes size; mtimes differ between identical installs
    h = hashlib.sha256(f"{FORMAT}|{sys.version_info[:3]}|{cfg.val_frac}|{cfg.max_bytes}".encode())
    for rel in files:
        h.update(f"\n{rel}\t{(root / rel).stat().st_size}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# the corpus


def load_corpus(cfg: Optional[CorpusConfig] = None, root: Union[Path, str, None] = None) -> Corpus:
    """The train and validation byte streams of the standard library (from the cache when it is there).

    Each split takes its files in the order of a hash of their path (deterministic, but spread over the whole
    library rather than alphabetical, so a capped corpus is not all asyncio and email) until its share of
    max_bytes is reached; its stream is those files in that order, each followed by SEPARATOR.
    """
    cfg = cfg or CorpusConfig()
    root = Path(root) if root is not None else stdlib_root()
    files = stdlib_files(root)
    if not files:
        raise FileNotFoundError(f"no .py files under {root}: is the standard library installed?")
    key = _cache_key(root, files, cfg)
    folder = _cache_dir(cfg)
    paths = {split: folder / f"stdlib-{key}-{split}.npy" for split in ("train", "val")}
    lists = folder / f"stdlib-{key}-files.txt"

    # each split is capped at its share of max_bytes, so a small cap still leaves both splits some text
    val_files = _capped(root, [r for r in files if is_validation(r, cfg.val_frac)], cfg.max_bytes * cfg.val_frac)
    train_files = _capped(root, [r for r in files if not is_validation(r, cfg.val_frac)],
                          cfg.max_bytes * (1 - cfg.val_frac))

    if all(p.is_file() for p in paths.values()) and lists.is_file():
        try:
            train, val = (np.load(paths[s], allow_pickle=False) for s in ("train", "val"))
            return Corpus(train, val, train_files, val_files, str(root), key, cache_hit=True)
        except (OSError, ValueError):
            pass  # a truncated or foreign file: rebuild it below

    train, val = _stream(root, train_files), _stream(root, val_files)
    folder.mkdir(parents=True, exist_ok=True)
    # another process may build the same cache at the same time: each writes its own temporary, and the rename
    # makes whichever finishes last the file, never a half-written one
    for split, arr in (("train", train), ("val", val)):
        with atomic_path(paths[split]) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    with atomic_path(lists) as tmp:
        tmp.write_text("".join(f"train\t{r}\n" for r in train_files) + "".join(f"val\t{r}\n" for r in val_files),
                       encoding="utf-8")
    return Corpus(train, val, train_files, val_files, str(root), key, cache_hit=False)


def _capped(root: Path, files: Sequence[str], max_bytes: float) -> list[str]:
    """Files in the order of their path hash, until the first one that reaches max_bytes (it is kept)."""
    chosen, total = [], 0
    for rel in sorted(files, key=_path_hash):
        if total >= max_bytes:
            break
        chosen.append(rel)
        total += (root / rel).stat().st_size + 1
    return chosen


def _stream(root: Path, files: Sequence[str]) -> np.ndarray:
    parts = []
    for rel in files:
        parts.append((root / rel).read_bytes())
        parts.append(bytes([SEPARATOR]))
    return np.frombuffer(b"".join(parts), dtype=np.uint8).copy()  # [N] uint8, writable


def byte_vocab(stream: np.ndarray, min_count: int = 1) -> np.ndarray:
    """The byte values that occur at least min_count times in a stream, sorted: [V] int64.

    The probes draw their random tokens from these, so that they use embeddings the model has trained.
    """
    counts = np.bincount(np.asarray(stream, dtype=np.uint8), minlength=256)  # [256]
    vocab = np.nonzero(counts >= min_count)[0]
    return vocab[vocab != SEPARATOR].astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# windows


def windows(
    stream: np.ndarray,
    context: int,
    n: int,
    seed: Union[int, Sequence[int]],
    repeat_frac: float = 0.0,
    span_min: int = 8,
    span_max: int = 24,
    return_spans: bool = False,
):
    """n windows of context + 1 consecutive tokens at uniformly random places: [n, context + 1] int64.

    A fraction repeat_frac of the windows (round(repeat_frac * n) of them, chosen at random) get a copied
    span: a length L uniform in [span_min, span_max], a source start s uniform in [0, context + 1 - 2L], a
    destination start d uniform in [s + L, context + 1 - L]; then window[d : d + L] = window[s : s + L]
    (the copy overwrites the text that was there, and never overlaps its source). Everything is a function
    of `seed` (an int or a sequence of ints, as numpy's default_rng takes).

    return_spans: also return spans [n, 3] int64, (s, d, L) per window, (0, 0, 0) for plain windows.
    """
    stream = np.asarray(stream)
    width = context + 1
    if len(stream) < width:
        raise ValueError(f"the stream ({len(stream)} tokens) is shorter than one window ({width})")
    if repeat_frac > 0 and (not 1 <= span_min <= span_max or 2 * span_max > width):
        raise ValueError(f"need 1 <= span_min <= span_max and 2 * span_max <= context + 1, "
                         f"got {span_min}, {span_max}, context {context}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - width + 1, size=n)  # [n]
    offsets = np.arange(width)  # [W]
    out = stream[starts[:, None] + offsets].astype(np.int64)  # [n, W]

    spans = np.zeros((n, 3), dtype=np.int64)
    k = int(round(repeat_frac * n))
    if k:
        rows = np.sort(rng.permutation(n)[:k])  # [k]
        length = rng.integers(span_min, span_max + 1, size=k)  # [k]
        src = (rng.random(k) * (width - 2 * length + 1)).astype(np.int64)  # [k], uniform in [0, W - 2L]
        lo = src + length
        dst = lo + (rng.random(k) * (width - length - lo + 1)).astype(np.int64)  # [k], uniform in [s+L, W-L]
        # a gather instead of a loop: position p of the destination reads position p - d + s
        inside = (offsets >= dst[:, None]) & (offsets < (dst + length)[:, None])  # [k, W]
        read = np.where(inside, offsets - dst[:, None] + src[:, None], offsets)  # [k, W]
        out[rows] = np.take_along_axis(out[rows], read, axis=1)
        spans[rows] = np.stack([src, dst, length], axis=1)
    return (out, spans) if return_spans else out
