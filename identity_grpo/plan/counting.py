"""Counting activation memory on a CPU, where no allocator reports a peak.

- `SavedBytes`: the bytes autograd keeps for backward, counted with saved_tensors_hooks over
  unique storages (a view keeps its whole storage; two ops saving one tensor cost it once), not
  counting what existed before (weights, inputs). Gradient checkpointing keeps a block's inputs
  in the checkpoint's closure, which no hook sees: `checkpoint_fn` is a checkpointing function
  for diffusers / transformers models that runs torch's non-reentrant checkpoint and adds its
  inputs to the count.
- `LiveBytes`: the peak of all bytes alive while a function runs (forward, backward, recompute),
  from a dispatch mode that follows every storage an op creates until it is freed. It measures
  the transient working sets no hook sees: a no-grad forward, a backward's gradient buffers.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint


def _key(t: torch.Tensor) -> tuple[str, int]:
    return (t.device.type, t.untyped_storage().data_ptr())


class SavedBytes:
    """with SavedBytes(exclude=[...model tensors, inputs]) as saved: out = model(x) -> saved.bytes."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._seen = {_key(t) for t in exclude}
        self.bytes = 0
        self._keep: list[torch.Tensor] = []  # what the count saw stays alive, so no address is reused
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def add(self, t: torch.Tensor) -> None:
        if t.untyped_storage().data_ptr() == 0:
            return
        key = _key(t)
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
            self._keep.append(t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    def checkpoint_fn(self, function, *args, **kwargs):
        """A model's checkpointing function: torch's non-reentrant checkpoint, whose kept inputs are counted
        (keyword tensors of a functools.partial too: transformers passes masks and rotary tables that way)."""
        bound = getattr(function, "keywords", {}) or {}
        for t in tree_flatten((args, kwargs, bound))[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return checkpoint(function, *args, use_reentrant=False, **kwargs)

    def __enter__(self) -> "SavedBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class LiveBytes(TorchDispatchMode):
    """with LiveBytes() as live: ... -> live.peak, live.current (bytes of storages created inside).

    A storage is followed through its Python object, which torch keeps alive exactly as long as the
    storage itself (also when only autograd's saved variables still hold it)."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[tuple[str, int], int] = {}

    def reset_peak(self) -> None:
        self.peak = self.current

    def _free(self, key: tuple[str, int]) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = _key(t)
            if storage.data_ptr() == 0 or key in self._live or key in inputs:
                continue  # empty, already followed, or a view of something (made before or inside)
            self._live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out
