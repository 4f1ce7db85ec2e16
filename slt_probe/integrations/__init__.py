"""LLCHook inside training frameworks: `hf` (transformers Trainer) and `lightning` (Lightning Trainer).

Each submodule imports its framework when it is imported, and only then: importing this package needs
neither, and importing a submodule without its framework raises an ImportError that says what to install.
"""

from typing import Any

from slt_probe.runs.hook import LLCHook


def as_hook(hook_or_data: Any, **hook_kwargs: Any) -> LLCHook:
    """The callbacks take an LLCHook, or LLCHook's arguments to build one."""
    if isinstance(hook_or_data, LLCHook):
        if hook_kwargs:
            raise TypeError(f"pass an LLCHook or LLCHook's arguments, not both (got {sorted(hook_kwargs)})")
        return hook_or_data
    return LLCHook(hook_or_data, **hook_kwargs)
