"""The non-finite guard every trainer shares: a step whose loss, gradient, reward or generated clip
is NaN or inf is skipped before anything reaches the optimizer, and the recipe skeleton counts it.

    values = {"loss": torch.stack(losses), "gradient": grad_norm}
    bad = first_non_finite(accelerator, values)   # the same answer on every process
    if bad:
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteStep(bad, describe(values[bad]))
"""
from __future__ import annotations

import torch


class NonFiniteStep(Exception):
    """Raised by a method's train_step (on every process alike) when it skipped its optimizer step
    because `quantity` ("loss", "gradient", "reward", "clip", "kl") was non-finite; nothing was
    applied. core.recipe counts it and stops the run after train.max_consecutive_skips in a row."""

    def __init__(self, quantity: str, detail: str):
        super().__init__(f"{quantity}: {detail}")
        self.quantity, self.detail = quantity, detail


def is_finite(value: torch.Tensor | float | None) -> bool:
    return value is None or bool(torch.isfinite(torch.as_tensor(value)).all())


def first_non_finite(accelerator, values: dict[str, torch.Tensor | float | None]) -> str | None:
    """The first name whose value (any shape; None counts as finite) is non-finite on any process,
    the same answer on every process (one all-reduce): a step skipped by some processes only would
    leave the others waiting in the next collective."""
    flags = accelerator.reduce(torch.tensor([float(not is_finite(v)) for v in values.values()],
                                            device=accelerator.device), "sum")
    return next((name for name, flag in zip(values, flags.tolist()) if flag), None)


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is True on any (one all-reduce)."""
    return first_non_finite(accelerator, {"flag": float("nan") if flag else 0.0}) is not None


def finite_samples(values: torch.Tensor) -> torch.Tensor:
    """[B] bool: the samples (first dimension) whose every entry is finite."""
    return torch.isfinite(values.detach().reshape(values.shape[0], -1)).all(dim=1)


def describe(value: torch.Tensor | float | None) -> str:
    """What a log line says about a checked value: "nan", "2 of 4 values non-finite (nan)", or, when
    only another process saw the non-finite value, that."""
    flat = torch.as_tensor(value if value is not None else 0.0).detach().float().flatten()
    bad = flat[~torch.isfinite(flat)]
    if bad.numel() == 0:
        return "non-finite on another process"
    first = str(bad[0].item())
    return first if flat.numel() == 1 else f"{bad.numel()} of {flat.numel()} values non-finite ({first})"
