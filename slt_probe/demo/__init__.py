"""The induction bump on a laptop: a 2-layer attention-only transformer (model) trained on CPython's own standard
library with copied spans mixed in (corpus, train), walked with behavioural probes and refined λ̂ (pipeline)."""

from slt_probe.demo.pipeline import DemoConfig, DemoReport, InductionProbe, run_demo
from slt_probe.demo.train import TrainConfig, train_demo

__all__ = ["DemoConfig", "DemoReport", "InductionProbe", "run_demo", "TrainConfig", "train_demo"]
