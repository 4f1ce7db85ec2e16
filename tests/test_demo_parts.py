"""The demo's parts: the standard-library corpus, the copied-span windows, training with checkpoints, the probes.

Fast (a few seconds): corpora are built from small fake library folders or capped at a few hundred kB, and
the training run is 20 steps of a tiny model.
"""

import json
import math

import numpy as np
import pytest
import torch
from modelfiles import load_model_file

from slt_probe import corpus as corpus_mod
from slt_probe import probes
from slt_probe.checkpoints import discover, load_into, load_state_dict
from slt_probe.corpus import CorpusConfig, byte_vocab, is_validation, load_corpus, stdlib_files, windows
from slt_probe.inputs import build_model
from slt_probe.train import MODEL_FILE, TrainConfig, checkpoint_steps, train_demo


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


# ----------------------------------------------------------------------------------------------------------
# corpus


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


# ----------------------------------------------------------------------------------------------------------
# training


def test_checkpoint_grid():
    cfg = TrainConfig(steps=3000, n_log=20, n_linear=10, log_from=1)
    steps = checkpoint_steps(cfg)
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 3000
    assert {0, 300, 1500, 2700} <= set(steps) and 1 in steps
    assert len(steps) <= 20 + 11 + 1
    assert sum(s < 100 for s in steps) >= 8  # log spacing: dense early
    # no log-spaced step within 10% of an evenly spaced one
    assert all(min(abs(s - t) for t in range(0, 3001, 300)) > 0.1 * s or s % 300 == 0 for s in steps)
    late = checkpoint_steps(TrainConfig(steps=3000, n_log=10, n_linear=0, log_from=50))
    assert late[:2] == [0, 50] and late[-1] == 3000 and len(late) == 11
    assert checkpoint_steps(TrainConfig(steps=5, n_log=0, n_linear=0)) == [0, 5]
    assert checkpoint_steps(TrainConfig(steps=20, n_log=4, n_linear=0, log_from=50)) == [0, 20]  # clamped
    default = checkpoint_steps(TrainConfig())
    assert 25 <= len(default) <= 35 and default[1] == 50  # the demo walks ~30 checkpoints, none in the first drop


TINY = dict(threads=1, log_from=1, d_model=16, n_heads=2, steps=20, batch=8, warmup=5, eval_every=10, n_log=4, n_linear=2,
            eval_windows=16, data_windows=40, probe_min_count=1)


def tiny_config(tmp_path, **kw):
    corpus = CorpusConfig(context=16, span_min=2, span_max=6, repeat_frac=0.5, max_bytes=300_000,
                          cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**TINY, **kw}, corpus=corpus)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    cfg = tiny_config(tmp)
    seen = []
    result = train_demo(cfg, tmp / "run", progress=lambda step, total, row: seen.append((step, total)))
    return cfg, result, seen


def test_train_demo_writes_a_walkable_run(tiny_run):
    cfg, result, seen = tiny_run
    out = result.out_dir
    ckpts, _ = discover(out)
    assert [c.step for c in ckpts] == checkpoint_steps(cfg) == result.checkpoints
    raw = torch.load(out / "step_20.pt", weights_only=True)
    assert set(raw) == {"model", "step"} and raw["step"] == 20

    model, _ = build_model(f"{MODEL_FILE}:attn_only", out / "model.json")
    assert json.loads((out / "model.json").read_text())["n_ctx"] == 16
    load_into(model, load_state_dict(ckpts[-1]), source="test")

    data = np.load(out / "data.npy")
    assert data.shape == (40, 17) and data.dtype == np.int64 and data.max() < 256
    vocab = np.load(out / "probe_tokens.npy")
    assert vocab.ndim == 1 and 0 not in vocab and ord("e") in vocab

    log = json.loads((out / "train_log.json").read_text())
    steps = [r["step"] for r in log["log"]]
    assert steps == sorted(steps) and 0 in steps and 10 in steps and 20 in steps
    assert log["log"][0]["train_loss"] is None  # nothing trained yet: null, not NaN
    last = log["log"][-1]
    assert all(math.isfinite(last[k]) for k in ("train_loss", "val_loss", "val_loss_plain"))
    assert last["val_loss"] < log["log"][0]["val_loss"]  # it learned something (bytes are far from uniform)
    assert log["config"]["corpus"]["context"] == 16
    assert seen[-1] == (20, 20)


def test_train_demo_is_deterministic_and_restores_global_state(tiny_run, tmp_path):
    cfg, result, _ = tiny_run
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = train_demo(cfg, tmp_path / "again")
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads
    a = torch.load(result.out_dir / "step_20.pt", weights_only=True)["model"]
    b = torch.load(again.out_dir / "step_20.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(result.out_dir / "data.npy"), np.load(again.out_dir / "data.npy"))


def test_train_config_round_trips_through_its_dict():
    cfg = TrainConfig(d_model=32, corpus=CorpusConfig(context=32, span_max=12))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ----------------------------------------------------------------------------------------------------------
# probes


def synthetic_patterns(T=12, block=6, B=3):
    """[1, B, 3, T, T]: head 0 attends to t - 1, head 1 is an exact induction head on blocks of `block`
    repeated, head 2 attends uniformly."""
    attn = torch.zeros(1, B, 3, T, T)
    for t in range(T):
        attn[0, :, 0, t, max(t - 1, 0)] = 1
        attn[0, :, 1, t, t - block + 1 if t >= block else 0] = 1
        attn[0, :, 2, t, : t + 1] = 1 / (t + 1)
    return attn


def test_scores_on_synthetic_patterns():
    attn = synthetic_patterns()
    prev = probes.prev_token_scores(attn)
    pm = probes.prefix_matching_scores(attn, 6)
    assert prev.shape == pm.shape == (1, 3)
    assert prev[0, 0] == pytest.approx(1.0) and prev[0, 1] < 0.2
    assert pm[0, 1] == pytest.approx(1.0) and pm[0, 0] == 0
    assert prev[0, 2] == pytest.approx(np.mean([1 / (t + 1) for t in range(1, 12)]))
    with pytest.raises(ValueError):
        probes.prefix_matching_scores(attn, 12)


def test_repeated_blocks():
    seqs = probes.repeated_blocks(range(10, 60), 20, 5, seed=1)
    assert seqs.shape == (5, 20) and seqs.dtype == torch.int64
    assert torch.equal(seqs[:, :10], seqs[:, 10:])
    assert all(len(set(s[:10].tolist())) == 10 for s in seqs)  # distinct within a block
    assert seqs.min() >= 10 and seqs.max() < 60
    odd = probes.repeated_blocks([1, 2, 3], 9, 2, seed=0)  # tiny vocabulary: repeats allowed; third copy starts
    assert odd.shape == (2, 9) and torch.equal(odd[:, 8], odd[:, 0])


def previous_token_model(n_ctx=16):
    """An attention-only model whose layer-0 head 0 attends to the previous position, by construction:
    position t's embedding is the unit vector e_t, the query maps e_t to c·e_{t-1}, the key is the identity."""
    model = load_model_file("attn_only").attn_only(vocab_size=32, n_ctx=n_ctx, d_model=2 * n_ctx, n_heads=2)
    d, dh = 2 * n_ctx, n_ctx
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.pos_embed.weight.copy_(torch.eye(n_ctx, d))  # [T, d]: e_t
        w = model.blocks[0].qkv.weight  # [3d, d]: q rows 0..d-1, k rows d..2d-1 (head 0: the first dh of each)
        w[:dh, :n_ctx] = 50.0 * torch.diag(torch.ones(n_ctx - 1), 1)  # column t is 50·e_{t-1}: q_t = 50·e_{t-1}
        w[d:d + dh, :n_ctx] = torch.eye(n_ctx)
    return model


def test_probes_find_a_constructed_previous_token_head():
    model = previous_token_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    icl = torch.randint(0, 32, (8, 17))
    p = probes.induction_probes(model, vocab_tokens=range(32), n_seqs=4, seed=0, icl_data=icl)
    assert p["prev_token"].shape == p["prefix_matching"].shape == (2, 2) and p["block"] == 8
    assert p["prev_token"][0, 0] > 0.9  # the constructed head
    assert p["prev_token"][0, 1] < 0.3 and p["prev_token"][1].max() < 0.3  # zero weights attend uniformly
    assert np.all((p["prefix_matching"] >= 0) & (p["prefix_matching"] <= 1))
    assert p["position_loss"].shape == (16,) and math.isfinite(p["icl_score"])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    s = probes.summarize(p)
    assert set(s) == {"prev_token", "prefix_matching", "icl_score"} and s["prev_token"] > 0.9


def test_probe_checkpoints_over_the_tiny_run(tiny_run):
    cfg, result, _ = tiny_run
    model, _ = build_model(f"{MODEL_FILE}:attn_only", result.out_dir / "model.json")
    series = probes.probe_checkpoints(model, result.out_dir, vocab_tokens=np.load(result.out_dir / "probe_tokens.npy"),
                                      n_seqs=4, icl_data=np.load(result.out_dir / "data.npy")[:8])
    k = len(result.checkpoints)
    assert series["step"].tolist() == result.checkpoints
    assert series["prev_token"].shape == series["prefix_matching"].shape == series["icl_score"].shape == (k,)
    assert series["prev_token_heads"].shape == (k, 2, 2)
    assert np.all((series["prev_token"] >= 0) & (series["prev_token"] <= 1))
    assert np.all(np.isfinite(series["icl_score"]))


def test_icl_positions_and_score():
    early, late = probes.icl_positions(64)
    assert (early.start, early.stop, late.start, late.stop) == (4, 8, 56, 64)
    loss = np.linspace(3.0, 1.0, 64)
    assert probes.icl_score(loss) < 0
    assert probes.icl_score(np.ones(64)) == 0


def test_onset():
    steps = [0, 10, 20, 40, 80, 160, 320, 640]
    assert probes.onset(steps, [0.0, 0.0, 0.01, 0.05, 0.35, 0.6, 0.62, 0.6]) == 80  # half of ~0.61
    assert probes.onset(steps, [0.06] * 8) is None  # never rises
    assert probes.onset(steps, [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.05, 0.05]) is None  # falls
    # a score starting at the uniform-attention level: half its final value, or half-way from its start
    assert probes.onset(steps, [0.2, 0.2, 0.2, 0.25, 0.4, 0.55, 0.8, 0.8]) == 80
    assert probes.onset(steps, [0.2, 0.2, 0.2, 0.25, 0.4, 0.55, 0.8, 0.8], from_baseline=True) == 160
    # starting above half its final value, it cannot rise through it: half-way from the start
    assert probes.onset(steps, [0.5, 0.5, 0.5, 0.6, 0.7, 0.9, 1.0, 1.0]) == 160
    # any order in, NaN rows ignored
    assert probes.onset(steps[::-1], [0.6, 0.62, 0.6, 0.35, 0.05, 0.01, 0.0, 0.0]) == 80
    assert probes.onset([0, 1, 2, 3], [0.0, float("nan"), 1.0, 1.0]) == 2
