"""The demo's corpus (slt_probe/demo/corpus.py): CPython's standard library as bytes, its deterministic split and
cache, the byte vocabulary, and the windows with copied spans that let induction heads form.

Fast: corpora are built from small fake library folders or capped at a few hundred kB.
"""

import numpy as np
import pytest

from slt_probe.demo import corpus as corpus_mod
from slt_probe.demo.corpus import CorpusConfig, byte_vocab, is_validation, load_corpus, stdlib_files, windows


def fake_library(root, n=40):
    """A folder shaped like a standard library: packages, a test suite and site-packages to be skipped."""
    for i in range(n):
        sub = root / ("pkg%d" % (i % 3)) if i % 2 else root
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i}  # module {i}\n" * (5 + i))
    for skipped in ("test", "site-packages/thing", "pkg1/tests", "idlelib/idle_test"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "skip_me.py").write_text("SKIP = True\n")
    (root / "notes.txt").write_text("not python\n")
    return root


def test_stdlib_files_real_library_sorted_without_tests():
    files = stdlib_files()
    assert len(files) > 100 and files == sorted(files)
    assert "os.py" in files
    assert not any(part in corpus_mod.EXCLUDED_DIRS for f in files for part in f.split("/")[:-1])


def test_corpus_deterministic_split_and_cache(tmp_path):
    root = fake_library(tmp_path / "lib")
    cfg = CorpusConfig(cache_dir=str(tmp_path / "cache"), val_frac=0.3)
    a = load_corpus(cfg, root=root)
    b = load_corpus(cfg, root=root)
    assert not a.cache_hit and b.cache_hit and a.key == b.key
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert a.train.dtype == np.uint8 and a.train.ndim == 1
    assert not set(a.train_files) & set(a.val_files)
    assert len(a.train_files) + len(a.val_files) == 40 and a.val_files and a.train_files
    assert all(is_validation(f, 0.3) for f in a.val_files)
    assert not any("skip_me" in f for f in a.train_files + a.val_files)
    # each file's bytes, then the separator, in the recorded order
    expect = b"".join((root / f).read_bytes() + b"\0" for f in a.train_files)
    assert a.train.tobytes() == expect
    # the split is by path alone: a new file moves no other file between the splits, and changes the key
    (root / "zzz_new.py").write_text("x = 1\n")
    c = load_corpus(cfg, root=root)
    assert not c.cache_hit and c.key != a.key
    assert set(a.val_files) <= set(c.val_files) and set(a.train_files) <= set(c.train_files)


def test_corpus_cap_and_cache_dir_from_environment(tmp_path, monkeypatch):
    root = fake_library(tmp_path / "lib")
    monkeypatch.setenv("SLT_PROBE_CACHE", str(tmp_path / "env_cache"))
    capped = load_corpus(CorpusConfig(max_bytes=2000), root=root)
    biggest = max(f.stat().st_size + 1 for f in root.rglob("*.py"))
    # each split stops at the first file that reaches its share of the cap (val_frac 0.1)
    assert 0 < len(capped.train) < 1800 + biggest and 0 < len(capped.val) < 200 + biggest
    assert len(capped.train_files) + len(capped.val_files) < 40
    assert list((tmp_path / "env_cache").glob("stdlib-*-train.npy"))


def test_byte_vocab_skips_rare_bytes_and_the_separator():
    stream = np.array([0, 1, 1, 1, 7, 7, 200], dtype=np.uint8)
    assert byte_vocab(stream).tolist() == [1, 7, 200]
    assert byte_vocab(stream, min_count=2).tolist() == [1, 7]


def test_windows_shape_determinism_and_copied_spans():
    stream = (np.arange(5000) % 251).astype(np.uint8)  # each token is the previous + 1 (mod 251)
    w, spans = windows(stream, 32, 200, seed=3, repeat_frac=0.4, span_min=4, span_max=10, return_spans=True)
    assert w.shape == (200, 33) and w.dtype == np.int64
    assert np.array_equal(w, windows(stream, 32, 200, seed=3, repeat_frac=0.4, span_min=4, span_max=10))
    assert not np.array_equal(w, windows(stream, 32, 200, seed=4, repeat_frac=0.4, span_min=4, span_max=10))
    copied = spans[:, 2] > 0
    assert copied.sum() == 80
    for row, (s, d, n) in zip(w, spans):
        if n == 0:  # a plain window: consecutive text
            assert np.all(np.diff(row) % 251 == 1)
            continue
        assert 4 <= n <= 10 and 0 <= s and s + n <= d and d + n <= 33
        assert np.array_equal(row[d:d + n], row[s:s + n])
        outside = np.ones(33, bool)
        outside[d:d + n] = False
        assert np.all((row[outside] - row[0]) % 251 == np.nonzero(outside)[0])  # untouched elsewhere (d >= 1)
    plain = windows(stream, 32, 50, seed=0)
    assert np.all(np.diff(plain, axis=1) % 251 == 1)


def test_windows_rejects_spans_that_do_not_fit():
    with pytest.raises(ValueError):
        windows(np.zeros(100, np.uint8), 16, 4, seed=0, repeat_frac=0.5, span_min=4, span_max=9)
    with pytest.raises(ValueError):
        CorpusConfig(context=16, span_min=4, span_max=9)
