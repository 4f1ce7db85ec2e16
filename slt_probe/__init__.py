"""slt-probe: local learning coefficient (LLC) estimation over training checkpoints.

The package is layered, each layer importing only those before it (docs/architecture.md):
engine → inputs → store → analysis → runs, demo, integrations → cli.
"""

from importlib.metadata import PackageNotFoundError, version

from slt_probe.analysis.transitions import TransitionConfig, Transitions, detect_transitions
from slt_probe.engine.diagnostics import Diagnostics
from slt_probe.engine.estimate import LLCResult, estimate_components, estimate_llc
from slt_probe.engine.sampler import Coordinates, SGLDConfig
from slt_probe.inputs.heads import components
from slt_probe.runs.hook import LLCHook, log_schedule
from slt_probe.runs.walker import WalkSummary, walk
from slt_probe.store import Results, load_results

try:
    __version__ = version("slt-probe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["SGLDConfig", "LLCResult", "Diagnostics", "estimate_llc", "estimate_components", "Coordinates", "components",
           "walk", "WalkSummary", "load_results", "Results",
           "detect_transitions", "TransitionConfig", "Transitions", "LLCHook", "log_schedule",
           "__version__"]
