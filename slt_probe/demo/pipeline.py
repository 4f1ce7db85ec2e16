"""The induction bump end to end: train, walk with probes, find the stages, draw them, and check the story.

A 2-layer attention-only transformer learns CPython's standard library at the byte level, with copied
spans mixed into the training windows so that induction heads form within minutes (corpus.py says how).
Along the way previous-token heads form and then induction heads; the question is whether λ̂ flags those
changes of internal structure (Hoogland et al. 2024) where the behavioural probes say they happen. Beside the
LLC of the whole model, the walk measures the refined LLC of each layer's heads (only that layer's attention
weights sampled; Wang et al. 2024): n-gram learning keeps the whole model's λ̂ climbing while the heads form,
and a layer's own λ̂ separates what happens in it. Each probe is read against the layer of its best head at
its onset.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from slt_probe.analysis import probes as probing
from slt_probe.analysis.plot import plot_results
from slt_probe.demo.corpus import CorpusConfig
from slt_probe.demo.train import ANCHOR, MODEL_SPEC, TrainConfig, build_model, train_demo
from slt_probe.engine.sampler import SGLDConfig
from slt_probe.inputs import heads
from slt_probe.inputs.checkpoints import discover
from slt_probe.runs.detect import detect_all
from slt_probe.runs.walker import walk
from slt_probe.store import Probes, load_results


class InductionProbe:
    """walk(probes=...): the best head's previous-token and prefix-matching scores, the ICL score, and the
    per-head score arrays, at each checkpoint (probes.py)."""

    info = {
        "prev_token": ("best previous-token head", "max over heads of the mean attention to the previous token"),
        "prefix_matching": ("best induction head (prefix matching)", "max over heads of the attention to the "
                            "token after the earlier occurrence, on a random block repeated twice"),
        "icl_score": ("ICL score (late − early loss)", "mean loss at late positions minus early positions "
                      "(Olsson et al. 2022); negative: later tokens are predicted better"),
        "prev_token_heads": ("previous-token score per head", "[layer, head]"),
        "prefix_matching_heads": ("prefix-matching score per head", "[layer, head]"),
    }

    def __init__(self, vocab_tokens, icl_data: Optional[torch.Tensor] = None, n_seqs: int = 64, seed: int = 0,
                 model: Optional[nn.Module] = None):
        """model: the architecture walked; with it, the norms of its LayerNorm gains and embeddings are probed too
        (probes.weight_norms), to see whether a fall in λ̂ comes with a collapse of either."""
        self.vocab_tokens, self.icl_data, self.n_seqs, self.seed = vocab_tokens, icl_data, n_seqs, seed
        self.info = {**self.info, **(probing.norm_info(model) if model is not None else {})}
        self.norms = model is not None

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        p = probing.induction_probes(model, vocab_tokens=self.vocab_tokens, n_seqs=self.n_seqs, seed=self.seed,
                                     icl_data=self.icl_data)
        return {**probing.best_scores(p), "prev_token_heads": p["prev_token"], "prefix_matching_heads": p["prefix_matching"],
                **(probing.weight_norms(model) if self.norms else {})}


@dataclass
class DemoConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    # chosen by slt_probe.runs.calibrate on this run: passes everywhere (R-hat <= 1.01, ESS ~330)
    sgld: SGLDConfig = field(default_factory=lambda: SGLDConfig(lr=3e-4, localization=300.0, nbeta=30.0, chains=4,
                                                                   draws=100, burnin=30, batch_size=32, method="loop"))
    icl_windows: int = 128  # validation windows for the ICL score
    # refined LLCs: {name: regex over parameter names}; None: each layer's attention weights ("layer0", ...)
    refine: Optional[dict[str, str]] = None
    # instead, the heads the probes name (each probe's best head at its onset, L<layer>H<head>): a first walk
    # measures the whole model's λ̂ and the probes, a second adds those heads' refined λ̂ (inputs/heads.py)
    refine_heads: bool = False
    # torch threads for the walk (restored afterwards). The model is small: a second thread gains little, and
    # on a 2-core machine with anything else running two threads were measured ~100x slower per step (each op
    # waits for the busy core), 1.8 ms vs 140-200 ms.
    threads: int = 1

    @staticmethod
    def quick() -> "DemoConfig":
        """The same pipeline in about a minute: a smaller model, a short run, a small SGLD budget (CI)."""
        train = TrainConfig(d_model=32, n_heads=2, steps=300, n_log=6, n_linear=3, eval_every=100, eval_windows=64,
                            data_windows=256, corpus=CorpusConfig(context=32, span_min=4, span_max=12, max_bytes=2_000_000))
        return DemoConfig(train=train, sgld=SGLDConfig(lr=1e-4, localization=100.0, nbeta=30.0, chains=2, draws=30,
                                                       burnin=5, batch_size=16, method="loop"), icl_windows=32)

    @staticmethod
    def make(quick: bool = False, anchor: bool = False, heads: bool = False) -> "DemoConfig":
        """The demo (or its quick version), with the anchor's architecture (train.ANCHOR) and refining the heads
        the probes name instead of each layer, as asked."""
        cfg = DemoConfig.quick() if quick else DemoConfig()
        train = replace(cfg.train, **ANCHOR) if anchor else cfg.train
        return replace(cfg, train=train, refine_heads=heads)

    def components(self) -> dict[str, str]:
        """The refined LLCs the first walk measures: each layer's heads, i.e. its qkv and output weights (none when
        the heads the probes name are refined in a second walk)."""
        if self.refine_heads:
            return {}
        if self.refine is not None:
            return dict(self.refine)
        return {f"layer{i}": rf"^blocks\.{i}\." for i in range(self.train.n_layers)}


@dataclass
class DemoReport:
    out_dir: Path
    results: Path
    plot: Path
    onsets: dict[str, Optional[int]]  # probe -> step where the best head's score rose through half its final value
    onsets_halfway: dict[str, Optional[int]]  # probe -> ... through half-way from its initial to its final value
    boundaries: list[dict]  # {step, kind, confidence, tentative, hidden}
    spurts: list[dict]  # {step, rate, start_step, end_step, dllc, dloss, type, hidden, confidence, tentative}
    stages: list[dict]  # {start_step, end_step, type, hidden, dllc, dloss}
    # probe -> the λ̂ transition (boundary or spurt) within ±1 checkpoint of its onset, or None; confident ones first
    aligned: dict[str, Optional[dict]]
    # component -> its refined λ̂'s {"params", "boundaries", "spurts", "stages"} (as above)
    refined: dict[str, dict]
    # probe -> {"component": its best head at the onset (refine_heads: L<layer>H<head>) or that head's layer,
    # "transition": as `aligned`, in that component's refined λ̂, or None}; only probes with an onset
    aligned_refined: dict[str, dict]
    seconds: dict[str, float]
    steps: list[int]


Progress = Callable[[str, int, int], None]  # progress(phase, done, total)


def run_demo(out_dir: str | Path = "checkpoints/demo", config: Optional[DemoConfig] = None,
             progress: Optional[Progress] = None) -> DemoReport:
    """Train, walk with probes, detect transitions, plot; everything under out_dir, one results file."""
    cfg = config or DemoConfig()
    out_dir = Path(out_dir)
    report = out_dir / "report.json"
    emit = progress or (lambda phase, done, total: None)
    seconds = {}

    start = time.perf_counter()
    run = out_dir / "run"
    train_demo(cfg.train, run, progress=lambda step, total, row: emit("train", step, total))
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    results = out_dir / "results.h5"
    components = walk_run(run, results, cfg, overwrite=True, progress=emit)
    seconds["walk"] = time.perf_counter() - start

    start = time.perf_counter()
    found = detect_all(results, refined=components)  # None: the LLC's; else a component's refined λ̂'s
    failed = [e for e in found.values() if isinstance(e, ValueError)]
    if failed:
        raise failed[0]
    t = found[None]
    png = plot_results(results, out_dir / "curves.png", title="the induction bump: λ̂ over training")
    seconds["transitions_and_plot"] = time.perf_counter() - start

    res = load_results(results)
    pv = Probes.read(results).values
    steps = sorted(pv)
    onsets, halfway = probe_onsets(pv), probe_onsets(pv, from_baseline=True)
    index = {s: i for i, s in enumerate(res.table.step.tolist())}
    summary = summarize(t)
    aligned = {name: near_transition(summary, at, index) for name, at in onsets.items()}
    refined = {name: {"params": pattern, **summarize(found[name])} for name, pattern in components.items()}
    aligned_refined = {}
    for name, (layer, head) in onset_heads(pv).items():
        # read against its best head at the onset, or that head's layer
        component = heads.head_name(layer, head) if cfg.refine_heads else f"layer{layer}"
        if component in refined:
            aligned_refined[name] = {"component": component,
                                     "transition": near_transition(refined[component], onsets[name], index)}
    out = DemoReport(out_dir=out_dir, results=results, plot=png, onsets=onsets, onsets_halfway=halfway,
                     boundaries=summary["boundaries"], spurts=summary["spurts"], stages=summary["stages"],
                     aligned=aligned, refined=refined, aligned_refined=aligned_refined, seconds=seconds, steps=steps)
    report.write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(out).items()}, indent=1))
    return out


def walk_run(run: Path, results: Path, cfg: DemoConfig, *, overwrite: bool = False,
             progress: Optional[Progress] = None, command: str = "slt-probe demo") -> dict[str, str]:
    """Walk the demo's run folder into `results` with its probes and refined λ̂ (cfg.components(), or with
    cfg.refine_heads the heads the probes name, added by a second walk). Returns the refined components,
    {name: what it samples}. Without overwrite, a walk already in `results` is continued."""
    emit = progress or (lambda phase, done, total: None)
    data = torch.from_numpy(np.load(run / "data.npy"))
    probe_tokens = np.load(run / "probe_tokens.npy") if (run / "probe_tokens.npy").exists() else np.arange(256)
    ckpts = discover(run)[0]
    components = cfg.components()  # refined LLCs: name -> regex over parameter names

    def counted(phase):
        return lambda kind, **info: emit(phase, info["index"] + 1, len(ckpts)) if kind in ("done", "skip") else None

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        model = build_model(cfg.train)
        walk_ = partial(walk, ckpts, results, model=model, data=data, config=cfg.sgld, root=run,
                        probes=InductionProbe(probe_tokens, data[: cfg.icl_windows], model=model),
                        meta={"command": command, "model": {"spec": MODEL_SPEC, "kwargs": cfg.train.model_kwargs()},
                              "data": {"path": str(run / "data.npy"), "format": "npy"},
                              "demo": json.dumps(asdict(cfg.train))})
        walk_(overwrite=overwrite, refine=components or None, on_event=counted("walk"))
        if cfg.refine_heads:
            named = {heads.head_name(*h) for h in onset_heads(Probes.read(results).values).values()}
            parts = [c for c in heads.components(model, "heads") if c.name in named]
            components = {c.name: str(c.params) for c in parts}
            if parts:  # the rows and probes are in the file: only the heads' units are new
                walk_(refine=parts, on_event=counted("refine"))
    finally:
        torch.set_num_threads(threads)
    return components


PROBES = ("prev_token", "prefix_matching")  # the scores whose onsets the demo reads λ̂ against


def probe_onsets(pv: dict[int, dict], from_baseline: bool = False) -> dict[str, Optional[int]]:
    """{probe: the step where its best head's score rises through half its final value (probes.onset), or None}.
    pv: a results file's probes, Probes.read(path).values."""
    steps = sorted(pv)
    return {name: probing.onset(steps, [pv[s][name] for s in steps], from_baseline=from_baseline) for name in PROBES}


def onset_heads(pv: dict[int, dict]) -> dict[str, tuple[int, int]]:
    """{probe: (layer, head) of its best head at its onset}, for the probes that have an onset (pv as probe_onsets).

    The best head at the onset is the head whose rise the onset marks; not the best one at the end: heads take over
    from each other (a layer-1 head can lead the previous-token score early and a layer-0 one, part of the induction
    circuit, later)."""
    out = {}
    for name, at in probe_onsets(pv).items():
        if at is not None:
            scores = np.asarray(pv[at][f"{name}_heads"])  # [layer, head]
            layer, head = np.unravel_index(np.nanargmax(scores), scores.shape)
            out[name] = int(layer), int(head)
    return out


def summarize(t) -> dict[str, list[dict]]:
    """A Transitions' boundaries, spurts and stages as plain dicts (report.json)."""
    return {
        "boundaries": [{k: getattr(b, k) for k in ("step", "kind", "confidence", "tentative", "hidden")}
                       for b in t.boundaries],
        "spurts": [{k: getattr(sp, k) for k in ("step", "rate", "start_step", "end_step", "dllc", "dloss", "type",
                                                "hidden", "confidence", "tentative")} for sp in t.spurts],
        "stages": [{"start_step": s.start_step, "end_step": s.end_step, "type": s.type, "hidden": s.hidden,
                    "dllc": s.dllc, "dloss": s.dloss} for s in t.stages],
    }


def near_transition(summary: dict, at: Optional[int], index: dict[int, int]) -> Optional[dict]:
    """The flagged transition (boundary or spurt) within ±1 checkpoint of step `at`: confident first, then nearest."""
    if at is None:
        return None
    flagged = [{"what": "boundary", **b} for b in summary["boundaries"]] + \
              [{"what": "spurt", **sp} for sp in summary["spurts"]]
    near = [f for f in flagged if abs(index[f["step"]] - index[at]) <= 1]
    near.sort(key=lambda f: (f["tentative"], abs(index[f["step"]] - index[at]), -f["confidence"]))
    return near[0] if near else None
