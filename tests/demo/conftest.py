"""The demo's tiny training run, shared by tests/demo/test_train.py and tests/demo/test_pipeline.py: 20 steps of a
tiny attention-only transformer on a capped standard-library corpus, trained once per session."""

import pytest

from slt_probe.demo.corpus import CorpusConfig
from slt_probe.demo.train import TrainConfig, train_demo

TINY = dict(threads=1, log_from=1, d_model=16, n_heads=2, steps=20, batch=8, warmup=5, eval_every=10, n_log=4, n_linear=2,
            eval_windows=16, data_windows=40, probe_min_count=1)


def tiny_config(tmp_path, **kw):
    corpus = CorpusConfig(context=16, span_min=2, span_max=6, repeat_frac=0.5, max_bytes=300_000,
                          cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**TINY, **kw}, corpus=corpus)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(config, TrainResult, [(step, total)] as the progress callback saw them) of the tiny run."""
    tmp = tmp_path_factory.mktemp("demo")
    cfg = tiny_config(tmp)
    seen = []
    result = train_demo(cfg, tmp / "run", progress=lambda step, total, row: seen.append((step, total)))
    return cfg, result, seen


@pytest.fixture()
def make_tiny_config():
    """tiny_config itself, for tests that train a variant of the tiny run."""
    return tiny_config
