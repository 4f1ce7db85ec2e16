"""LLCTrainerCallback: λ̂ during a Hugging Face transformers Trainer run (slt_probe.runs.hook.LLCHook).

    from slt_probe.integrations.hf import LLCTrainerCallback
    callback = LLCTrainerCallback(tokens, config=SGLDConfig(...), schedule=log_schedule(max_steps), out="run.h5")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback]).train()

The step is the Trainer's global_step, which counts optimizer steps (gradient accumulation included).
on_train_begin measures the starting weights (step 0 of a fresh run), on_step_end the weights after each
optimizer step. In a distributed run only the main process measures and writes the file.
"""

from __future__ import annotations

from typing import Any

from slt_probe.integrations import as_hook


def _trainer_callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError as e:
        raise ImportError("slt_probe.integrations.hf needs Hugging Face transformers: pip install transformers") \
            from e
    return TrainerCallback


class LLCTrainerCallback(_trainer_callback_base()):
    """A transformers TrainerCallback around an LLCHook: pass the hook, or LLCHook's arguments."""

    def __init__(self, hook_or_data: Any, **hook_kwargs: Any):
        self.hook = as_hook(hook_or_data, **hook_kwargs)

    def _measure(self, state, model) -> None:
        if model is not None and state.is_world_process_zero:
            self.hook(model, state.global_step)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._measure(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._measure(state, model)
