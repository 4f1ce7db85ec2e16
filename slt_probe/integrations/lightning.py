"""LLCCallback: λ̂ during a Lightning Trainer run (slt_probe.runs.hook.LLCHook).

    from slt_probe.integrations.lightning import LLCCallback
    callback = LLCCallback(tokens, config=SGLDConfig(...), schedule=log_schedule(max_steps), out="run.h5",
                           model_getter="model")  # the network inside the LightningModule; default: the module
    lightning.Trainer(max_steps=max_steps, callbacks=[callback]).fit(module, loader)

The step is trainer.global_step, which counts optimizer steps: under gradient accumulation several batches
end on the same step, and the hook measures it once, after the step's update. on_train_start measures the
starting weights. In a distributed run only global rank 0 measures and writes the file.

The estimate deep-copies what model_getter returns. A LightningModule copies without its trainer, but
also with everything else it holds (metrics, a frozen teacher, ...): point model_getter at the network.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from torch import nn

from slt_probe.integrations import as_hook


def _callback_base() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:  # the package's older name
            from pytorch_lightning import Callback
        except ImportError as e:
            raise ImportError("slt_probe.integrations.lightning needs Lightning: pip install 'slt-probe[lightning]'") \
                from e
    return Callback


ModelGetter = Union[None, str, Callable[[Any], nn.Module]]


class LLCCallback(_callback_base()):
    """A Lightning Callback around an LLCHook: pass the hook, or LLCHook's arguments.

    model_getter: what to measure. None: the LightningModule itself; "model" (or "net.encoder"): that
    attribute of it; a function: model_getter(pl_module) -> nn.Module.
    """

    def __init__(self, hook_or_data: Any, *, model_getter: ModelGetter = None, **hook_kwargs: Any):
        self.hook = as_hook(hook_or_data, **hook_kwargs)
        self.model_getter = model_getter

    def model_of(self, pl_module) -> nn.Module:
        getter: Optional[Any] = self.model_getter
        if getter is None:
            return pl_module
        if isinstance(getter, str):
            model = pl_module
            for name in getter.split("."):
                model = getattr(model, name)
            return model
        return getter(pl_module)

    def _measure(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.hook(self.model_of(pl_module), trainer.global_step)

    def on_train_start(self, trainer, pl_module) -> None:
        self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._measure(trainer, pl_module)
