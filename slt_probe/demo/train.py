"""Train the demo model: a 2-layer attention-only transformer on the standard library's bytes, with checkpoints.

    from slt_probe.demo.train import TrainConfig, train_demo
    result = train_demo(TrainConfig(), "runs/demo")

writes into the run folder everything `slt-probe walk` needs:
  step_{N}.pt        {"model": state_dict, "step": N} on a log-spaced plus linear grid of steps (checkpoint_steps),
                     log-spaced because the early steps are where most of the development happens;
  model.json         the factory's keyword arguments: walk --model slt_probe.demo.model:attn_only --model-config model.json;
  data.npy           [N, context + 1] int64 windows of held-out text, mixed with copied spans like the training
                     windows (λ̂ is a property of the loss landscape of the training distribution, measured on
                     samples the model has not been fitted to);
  probe_tokens.npy   [V] int64, the byte values the behavioural probes draw their random tokens from;
  train_log.json     the config and, per evaluation, step, train loss (mean since the last evaluation),
                     validation loss on mixed and on plain windows.

Training is AdamW with a linear warm-up to a constant learning rate, so that changes late in the λ̂ curve are
the model's and not the schedule's. Everything is a function of the seed: the model's initialization, and each step's
batch, which windows() draws with seed (corpus seed, 0, step); the validation windows use (corpus seed, 1)
and (corpus seed, 2).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slt_probe.demo.corpus import CorpusConfig, byte_vocab, load_corpus, windows
from slt_probe.demo.model import AttnOnlyConfig, attn_only
from slt_probe.errors import InputError
from slt_probe.inputs.specs import read_kwargs
from slt_probe.store import atomic_path

MODEL_SPEC = "slt_probe.demo.model:attn_only"  # what `slt-probe walk --model` loads it as
# the anchor's architecture (Hoogland et al. 2024; TransformerLens normalization_type='LN', shortformer positions):
# TrainConfig(**ANCHOR), `slt-probe demo --anchor`
ANCHOR = dict(block_ln=True, final_ln=True, positions="shortformer")
VOCAB = 256  # bytes


@dataclass
class TrainConfig:
    # The defaults are the demo: on one CPU thread it trains in ~100 s and walks (28 checkpoints, the LLC and two
    # refined LLCs each) in ~300 s;
    # previous-token heads form around step 300-700 and induction heads around 3-6k (probes.py).
    # model: attn_only(**model_kwargs()); no MLPs, no LayerNorm (model.py)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    # the anchor's architecture (Hoogland et al. 2024; model.py): pre-LN blocks, a final LN, shortformer positions
    block_ln: bool = False
    final_ln: bool = False
    positions: str = "residual"
    # optimization
    steps: int = 12_000
    batch: int = 32
    lr: float = 1e-2  # at 3e-3 (context 64), induction heads had not formed in 3k steps even with every window copied
    warmup: int = 100
    # 0.3 rather than 0.05: induction formed later (3.6k vs 2.4k steps, one seed at repeat_frac 0.6; the seed alone
    # moves it ~2x), leaving a longer stretch between the two kinds of heads
    weight_decay: float = 0.3
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0
    # torch threads while training (restored afterwards). One: the matrices are small, so more threads gain at
    # most ~2x, and on a busy machine two threads were measured 20-35x slower than one (each op waits at a
    # barrier for a thread that is not scheduled)
    threads: int = 1
    # data: context, copied-span mix, split (corpus.py)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    # checkpoints and evaluation
    n_log: int = 22  # log-spaced checkpoints between step log_from and `steps`
    # first log-spaced step: before the loss has left its initial plateau w* is far from any minimum and SGLD
    # slides downhill (λ̂ < 0; measured -13 at step 25), so those checkpoints say nothing about the stages
    log_from: int = 50
    n_linear: int = 12  # evenly spaced checkpoints between 0 and `steps`
    eval_every: int = 200
    eval_windows: int = 256  # validation windows per evaluation
    data_windows: int = 1024  # windows in data.npy, for the walk
    probe_min_count: int = 100  # probe_tokens: bytes seen at least this often in the training split

    def model_kwargs(self) -> dict:
        anchor = dict(block_ln=self.block_ln, layer_norm=self.final_ln, positions=self.positions)
        # the anchor's options only where they differ from the model's defaults: the default demo's model.json (and the
        # model its results files name) stay what they were, so its older walks still continue
        return dict(vocab_size=VOCAB, n_ctx=self.corpus.context, d_model=self.d_model, n_heads=self.n_heads,
                    n_layers=self.n_layers, **{k: v for k, v in anchor.items() if v != getattr(AttnOnlyConfig, k)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, path: Optional[Union[Path, str]] = None, **overrides) -> "TrainConfig":
        """TrainConfig fields from a TOML / JSON file ([corpus] table for the corpus), then `overrides` that are
        not None (the command line's); the defaults where neither says. InputError when the file is bad."""
        try:
            cfg = cls.from_dict(read_kwargs(path)) if path is not None else cls()
            return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        except (TypeError, ValueError) as e:
            raise InputError(f"{path or 'config'}: {e}") from None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        corpus = CorpusConfig(**d.pop("corpus", {}))
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d, corpus=corpus)


@dataclass
class TrainResult:
    out_dir: Path
    checkpoints: list[int]  # steps saved as step_{N}.pt
    log: list[dict]  # the rows of train_log.json
    seconds: float
    num_params: int


Progress = Callable[[int, int, dict], None]  # progress(step, total_steps, last log row)


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """The steps to save: n_log log-spaced in [log_from, steps] and n_linear + 1 evenly spaced in [0, steps].

    Always includes 0 (the initialization) and `steps` (the end). A log-spaced step within 10% of an evenly
    spaced one is dropped (2400 beside 2401 costs a walk a checkpoint and shows nothing new), and rounding
    merges the small log-spaced steps, so the list can be shorter than n_log + n_linear + 1.
    """
    hi = math.log10(max(cfg.steps, 1))
    lo = min(math.log10(max(cfg.log_from, 1)), hi)
    log = np.round(np.logspace(lo, hi, cfg.n_log)).astype(int) if cfg.n_log else np.zeros(0, int)
    linear = {int(s) for s in np.round(np.linspace(0, cfg.steps, cfg.n_linear + 1))} if cfg.n_linear else set()
    linear |= {0, cfg.steps}
    near = lambda s: any(abs(s - t) <= 0.1 * s for t in linear)  # noqa: E731
    return sorted(linear | {int(s) for s in log if not near(s)})


def build_model(cfg: TrainConfig) -> nn.Module:
    """The demo model: attn_only(**cfg.model_kwargs()), as `walk --model slt_probe.demo.model:attn_only` builds it."""
    return attn_only(**cfg.model_kwargs())


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up from lr/warmup to lr over the first `warmup` steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


@torch.no_grad()
def mean_loss(model: nn.Module, tokens: torch.Tensor, chunk: int = 128) -> float:
    """Mean next-token cross-entropy over token windows [N, T+1]."""
    total = 0.0
    for part in tokens.split(chunk):
        logits = model(part[:, :-1])  # [b, T, vocab]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), part[:, 1:].reshape(-1), reduction="sum").item()
    return total / (tokens.shape[0] * (tokens.shape[1] - 1))


def train_demo(cfg: TrainConfig, out_dir: Union[Path, str], progress: Optional[Progress] = None,
               model: Optional[nn.Module] = None) -> TrainResult:
    """Train from scratch and write the run folder (see the module docstring). Returns what was written.

    model: a freshly built model to train instead of build_model(cfg) (it must take cfg.model_kwargs()).
    The global torch RNG state and thread count are restored on return.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = cfg.corpus
    corpus = load_corpus(c)
    save_at = set(checkpoint_steps(cfg))

    # held-out windows: the walk's data, and the validation sets (mixed like training, and plain text)
    val_mixed = windows(corpus.val, c.context, max(cfg.data_windows, cfg.eval_windows), (c.seed, 1),
                        c.repeat_frac, c.span_min, c.span_max)  # [N, T+1]
    val_plain = torch.from_numpy(windows(corpus.val, c.context, cfg.eval_windows, (c.seed, 2)))  # [n, T+1]
    np.save(out / "data.npy", val_mixed[: cfg.data_windows])
    np.save(out / "probe_tokens.npy", byte_vocab(corpus.train, cfg.probe_min_count))
    (out / "model.json").write_text(json.dumps(cfg.model_kwargs(), indent=2) + "\n")
    val_mixed = torch.from_numpy(val_mixed[: cfg.eval_windows])

    threads = torch.get_num_threads()
    start = time.perf_counter()
    log: list[dict] = []
    # fork_rng: the initialization draws from the global generator, which the caller's code may rely on
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(cfg.threads)
        try:
            torch.manual_seed(cfg.seed)
            model = model if model is not None else build_model(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
            running, seen = 0.0, 0
            for step in range(cfg.steps + 1):
                if step in save_at:
                    torch.save({"model": model.state_dict(), "step": step}, out / f"step_{step}.pt")
                if step % cfg.eval_every == 0 or step in save_at:
                    model.eval()
                    row = {"step": step, "train_loss": running / seen if seen else float("nan"),
                           "val_loss": mean_loss(model, val_mixed), "val_loss_plain": mean_loss(model, val_plain),
                           "seconds": time.perf_counter() - start}
                    log.append(row)
                    running, seen = 0.0, 0
                    if progress is not None:
                        progress(step, cfg.steps, row)
                if step == cfg.steps:
                    break

                model.train()
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, step)
                batch = torch.from_numpy(windows(corpus.train, c.context, cfg.batch, (c.seed, 0, step),
                                                 c.repeat_frac, c.span_min, c.span_max))  # [B, T+1]
                logits = model(batch[:, :-1])  # [B, T, vocab]
                loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running, seen = running + loss.item(), seen + 1
        finally:
            torch.set_num_threads(threads)

    seconds = time.perf_counter() - start
    _write_json(out / "train_log.json", {"config": cfg.to_dict(), "model_spec": MODEL_SPEC,
                                         "corpus_key": corpus.key, "seconds": seconds, "log": log})
    return TrainResult(out, sorted(save_at), log, seconds, sum(p.numel() for p in model.parameters()))


def _write_json(path: Path, obj) -> None:
    # NaN (the train loss before any step) is written as null, so the file is strict JSON
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_nan_to_none(obj), indent=1, default=str, allow_nan=False) + "\n")


def _nan_to_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
