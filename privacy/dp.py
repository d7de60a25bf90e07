"""DP-SGD with a unit of privacy chosen by the caller (a user, not one example), on Opacus.

Opacus supplies what must be right for the guarantee to hold: the accountant (RDP or PRV),
the noise multiplier that reaches a target epsilon (``get_noise_multiplier``), clipping and
noise (:class:`opacus.optimizers.DPOptimizer`), and the recurrent layers whose per-sample
gradients can be taken (``ModuleValidator.fix``: ``nn.GRU`` -> ``DPGRU``).

What Opacus's hooks cannot express is a *unit* made of several examples: GradSampleModule
takes one gradient per row of each layer's input, while one user's contribution is several
rows (or one sequence whose positions the towers flatten into rows), and the negatives the
loss compares against are rows that belong to nobody. So :func:`per_unit_gradients` takes the
gradient of each unit's whole loss with ``torch.func`` (``vmap`` over units of ``grad``: the
same machinery as Opacus's functorch mode), and hands it to the DPOptimizer as
``p.grad_sample``: the optimizer then clips each unit's gradient to ``max_grad_norm``, sums,
adds ``N(0, (noise_multiplier * max_grad_norm)^2)`` per coordinate, divides by the expected
number of units per step, and steps the accountant.

This module imports torch and Opacus; :mod:`tailored.privacy` does not import it, so the
serving process (which imports the package for consent and erasure) stays free of torch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import Tensor, nn

from tailored.errors import ConfigError

__all__ = [
    "DPPlan",
    "attach_grad_samples",
    "bounded_contributions",
    "dp_compatible",
    "noise_multiplier_for",
    "per_unit_gradients",
    "poisson_sample",
]

_log = logging.getLogger(__name__)


def noise_multiplier_for(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to within Opacus's 0.01 tolerance on epsilon) after
    which ``steps`` Poisson-sampled steps at ``sample_rate`` spend at most ``epsilon`` at
    ``delta``; a budget no noise can meet is a :class:`ConfigError` naming the keys."""
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
    except ValueError as e:
        raise ConfigError(
            f"[privacy] dp_epsilon: {epsilon} at dp_delta {delta} cannot be met over {steps} "
            f"steps at sampling rate {sample_rate:.4g} ({e}); raise dp_epsilon or lower "
            "[train] max_epochs / dp_users_per_step"
        ) from e


@dataclass
class DPPlan:
    """One DP-SGD run's parameters and its accountant.

    ``sample_rate``: the probability that a unit (a user) is in a step; ``expected_units``:
    ``sample_rate * units``, what the sum of clipped gradients is divided by; ``steps``: the
    steps planned (epsilon is accounted over the steps actually taken).
    """

    noise_multiplier: float
    sample_rate: float
    expected_units: float
    steps: int
    max_grad_norm: float
    delta: float
    target_epsilon: float | None
    accountant_name: str = "rdp"
    accountant: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.accountant = create_accountant(mechanism=self.accountant_name)

    @classmethod
    def for_target(
        cls,
        *,
        units: int,
        units_per_step: float,
        steps: int,
        max_grad_norm: float,
        delta: float,
        epsilon: float,
        noise_multiplier: float = 0.0,
        accountant: str = "rdp",
    ) -> DPPlan:
        """The plan for ``steps`` steps over ``units`` units, ``units_per_step`` expected per
        step; the noise is ``noise_multiplier``, or (0) the smallest that spends at most
        ``epsilon`` at ``delta`` in those steps."""
        if units < 1:
            raise ConfigError("[privacy] dp: no user has a training example to learn from")
        rate = min(1.0, units_per_step / units)
        sigma = noise_multiplier or noise_multiplier_for(
            epsilon=epsilon, delta=delta, sample_rate=rate, steps=steps, accountant=accountant
        )
        return cls(
            noise_multiplier=sigma,
            sample_rate=rate,
            expected_units=rate * units,
            steps=steps,
            max_grad_norm=max_grad_norm,
            delta=delta,
            target_epsilon=None if noise_multiplier else epsilon,
            accountant_name=accountant,
        )

    def optimizer(self, optimizer: torch.optim.Optimizer) -> DPOptimizer:
        """``optimizer`` wrapped to clip, noise and average per-unit gradients (set as
        ``p.grad_sample``, :func:`attach_grad_samples`); each of its steps is accounted."""
        dp = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=max(1, round(self.expected_units)),
            loss_reduction="mean",
        )
        dp.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        return dp

    @property
    def steps_taken(self) -> int:
        return sum(n for _, _, n in self.accountant.history)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before the first step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))

    def report(self) -> dict[str, Any]:
        """What the run's metrics record about its privacy."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "expected_users_per_step": self.expected_units,
            "max_grad_norm": self.max_grad_norm,
            "steps_planned": self.steps,
            "steps": self.steps_taken,
            "accountant": self.accountant_name,
        }


def poisson_sample(units: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Units 0..``units``-1 each kept independently with probability ``rate`` (int64 [S],
    sorted; S varies from step to step, and may be 0): the sampling the accountant's
    amplification by subsampling assumes, which a fixed-size shuffled batch is not."""
    return np.flatnonzero(rng.random(units) < rate).astype(np.int64)


def bounded_contributions(
    offsets: np.ndarray, units: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``k`` of each unit's rows, drawn without replacement: unit ``u`` owns rows
    ``offsets[u]:offsets[u+1]``. Returns (rows int64 [S, k], real bool [S, k]); a unit with
    fewer than ``k`` rows repeats its first chosen row where ``real`` is False (padding: its
    weight must be 0). A unit with no rows gets row ``offsets[u]`` and no real entry."""
    start, count = offsets[units], offsets[units + 1] - offsets[units]
    # a random permutation of each unit's rows, by sorting random keys: its first k are a
    # uniform draw without replacement
    keys = rng.random((len(units), int(count.max(initial=0)) or 1))
    keys[np.arange(keys.shape[1])[None, :] >= count[:, None]] = np.inf
    order = np.argsort(keys, axis=1)[:, :k]
    if order.shape[1] < k:
        order = np.pad(order, ((0, 0), (0, k - order.shape[1])))
    real = np.arange(k)[None, :] < np.minimum(count, k)[:, None]
    order = np.where(real, order, order[:, :1])
    rows = start[:, None] + np.where(count[:, None] > 0, order, 0)
    return rows.astype(np.int64), real


def dp_compatible(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose layers Opacus can take per-sample gradients of
    (``ModuleValidator.fix``: ``nn.GRU`` -> ``DPGRU``, which keeps ``nn.GRU``'s state-dict
    names beside its own), with ``model``'s weights. Raises :class:`ConfigError` for a layer
    it cannot fix."""
    fixed = ModuleValidator.fix(copy.deepcopy(model))
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ConfigError(
            f"[privacy] dp: the model has layers DP-SGD cannot train: {errors[0]} "
            "(try [model] sequence_encoder = 'gru' or 'mean')"
        )
    fixed.load_state_dict(model.state_dict(), strict=False)
    return fixed


def per_unit_gradients(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    shared: tuple[Tensor, ...] = (),
) -> tuple[dict[str, Tensor], Tensor]:
    """The gradient of each unit's loss: ``module(*unit_inputs, *shared)`` returns the scalar
    loss of one unit, whose tensors are ``inputs[i][u]`` (every tensor of ``inputs`` has the
    units along dim 0, [S, ...]); ``shared`` tensors are the same for every unit. Returns
    ({parameter name: [S, *shape]}, losses [S]). Dropout draws differently per unit."""
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in module.named_buffers()}

    def loss(p: dict[str, Tensor], *unit: Tensor) -> Tensor:
        return torch.func.functional_call(module, (p, buffers), (*unit, *shared))

    fn: Callable[..., tuple[dict[str, Tensor], Tensor]] = torch.func.vmap(
        torch.func.grad_and_value(loss),
        in_dims=(None, *[0] * len(inputs)),
        randomness="different",
    )
    return fn(params, *inputs)


def attach_grad_samples(module: nn.Module, grads: dict[str, Tensor] | None, units: int = 0) -> None:
    """Set each trainable parameter's ``grad_sample`` (what the DPOptimizer clips) from
    ``grads`` ({name: [S, *shape]}); None: an empty step (no unit sampled), whose update is
    the noise alone, as the accountant counts it."""
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        # the attribute Opacus's optimizer reads (GradSampleModule's hooks would set it)
        sample = (
            torch.zeros((units, *p.shape), dtype=p.dtype, device=p.device)
            if grads is None
            else grads[name]
        )
        setattr(p, "grad_sample", sample)  # noqa: B010 (not a declared attribute of Parameter)
