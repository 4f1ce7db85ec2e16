"""slt-probe: local learning coefficient (LLC) estimation over training checkpoints."""

from importlib.metadata import PackageNotFoundError, version

from slt_probe.diagnostics import Diagnostics
from slt_probe.hook import LLCHook, log_schedule
from slt_probe.llc import LLCResult, estimate_llc
from slt_probe.sampler import SGLDConfig
from slt_probe.store import Results, load_results
from slt_probe.transitions import TransitionConfig, Transitions, detect_transitions
from slt_probe.walker import WalkSummary, walk

try:
    __version__ = version("slt-probe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["SGLDConfig", "LLCResult", "Diagnostics", "estimate_llc", "walk", "WalkSummary", "load_results", "Results",
           "detect_transitions", "TransitionConfig", "Transitions", "LLCHook", "log_schedule",
           "__version__"]
