"""The native merge methods: pure functions from input tensors to one merged tensor.

Each reproduces mergekit 0.1.5's arithmetic (mergekit/merge_methods/linear.py, slerp.py,
generalized_task_arithmetic.py, sparsify.py): the same dtypes, the same order of operations,
so float32 results agree to rounding and bfloat16 results to at most one rounding step.
What differs is how the work is done: each function walks the flattened tensors in chunks
of ``CHUNK`` elements, so scratch memory is a few chunks whatever the tensor size, and
calls ``release(start, stop)`` once it is done with an element range in a pass, which lets
a caller that memory-maps its inputs drop those pages (resident memory stays bounded too).

Inputs are 1-D (flattened) tensors in their stored dtype; ``dtype`` is the working dtype
(mergekit's ``dtype:``, else the inputs' promoted dtype): inputs are rounded to it first,
as mergekit does when it loads them. The result is 1-D in the working dtype.

One deliberate difference: TIES' magnitude trim keeps every element whose magnitude is at
least the k-th largest (found by an in-place O(n) selection), where mergekit keeps exactly
k elements chosen by an unstable argsort. They differ only where several magnitudes tie at
the cut-off value, where mergekit's choice is arbitrary anyway.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

CHUNK = 1024 * 1024  # elements; equal to mergekit's slerp chunk, so its norms are summed alike
Release = Callable[[int, int], None]


def _keep(start: int, stop: int) -> None:
    """The default release: inputs that are ordinary tensors need nothing done."""


def _chunks(numel: int):
    for start in range(0, numel, CHUNK):
        yield start, min(start + CHUNK, numel)


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool,
           dtype: torch.dtype, release: Release = _keep) -> torch.Tensor:
    """Weighted sum in float32, divided by the weight sum when ``normalize``."""
    acc = _accumulator_dtype(dtype)
    coefficients = torch.tensor(list(weights), dtype=torch.float32).to(acc)
    denominator = coefficients.sum()
    numel = tensors[0].numel()
    out = torch.empty(numel, dtype=dtype)
    for start, stop in _chunks(numel):
        result = torch.zeros(stop - start, dtype=acc)
        for tensor, coefficient in zip(tensors, coefficients):
            result.addcmul_(tensor[start:stop].to(dtype), coefficient)
        if normalize:
            result.div_(denominator)
        out[start:stop] = result
        release(start, stop)
    return out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dtype: torch.dtype,
          release: Release = _keep, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation from v0 (t=0, the base) to v1 (t=1) over the whole tensor;
    nearly colinear or antipodal pairs (|cos| > dot_threshold) interpolate linearly."""
    acc = _accumulator_dtype(dtype)
    numel = v0.numel()
    t_ = torch.tensor([t], dtype=torch.float32).reshape(-1, 1).to(acc)

    def rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (v0[start:stop].to(dtype).to(acc).reshape(1, -1),
                v1[start:stop].to(dtype).to(acc).reshape(1, -1))

    if numel == 0:
        return ((1 - t_) * v0.to(dtype) + t_ * v1.to(dtype)).reshape(-1).to(dtype)
    norm_a_parts, norm_b_parts = [], []
    for start, stop in _chunks(numel):
        x, y = rows(start, stop)
        norm_a_parts.append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        norm_b_parts.append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
        release(start, stop)
    norm_a = torch.linalg.vector_norm(torch.stack(norm_a_parts), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack(norm_b_parts), dim=0)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot_parts = []
    for start, stop in _chunks(numel):
        x, y = rows(start, stop)
        dot_parts.append(((x / norm_a) * (y / norm_b)).sum(dim=1, keepdim=True))
        release(start, stop)
    dot = torch.stack(dot_parts).sum(dim=0).clamp(-1, 1)
    colinear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(colinear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(colinear, 1 - t_, torch.sin((1 - t_) * theta) / sin_theta)
    coef_b = torch.where(colinear, t_, torch.sin(t_ * theta) / sin_theta)
    out = torch.empty(numel, dtype=dtype)
    for start, stop in _chunks(numel):
        x, y = rows(start, stop)
        out[start:stop] = (coef_a * x + coef_b * y).reshape(-1)
        release(start, stop)
    return out


def magnitude_threshold(base: torch.Tensor, other: torch.Tensor, density: float, dtype: torch.dtype,
                        release: Release = _keep) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The smallest |other - base| that TIES' magnitude trim keeps at ``density``, plus the
    L1 norms of the task vector before and after the trim (for ``rescale``).

    Selection runs in place (numpy's introselect, O(n)) on a float32 buffer of magnitudes:
    one tensor of scratch instead of mergekit's full argsort and index arrays.
    """
    numel = base.numel()
    keep = max(1, int(density * numel))
    magnitudes = torch.empty(numel, dtype=torch.float32)
    for start, stop in _chunks(numel):
        magnitudes[start:stop] = (other[start:stop].to(dtype) - base[start:stop].to(dtype)).abs().float()
        release(start, stop)
    before = magnitudes.sum()
    values = magnitudes.numpy()
    values.partition(numel - keep)
    threshold = float(values[numel - keep])
    after = magnitudes[magnitudes >= threshold].sum()
    return threshold, before.to(dtype), after.to(dtype)


def task_arithmetic(base: torch.Tensor, others: Sequence[torch.Tensor], weights: Sequence[float],
                    densities: Sequence[float], dtype: torch.dtype, *, sign_consensus: bool,
                    sparsify: bool, normalize: bool, lambda_: float = 1.0, rescale: bool = False,
                    release: Release = _keep) -> torch.Tensor:
    """Task vectors (other - base), magnitude-trimmed to ``density`` when ``sparsify``,
    weighted, with TIES' sign election ('sum': the sign of the weighted sum) and disjoint
    mean when ``sign_consensus``, divided by the summed weights when ``normalize``, scaled
    by ``lambda_`` and added back to the base. ties = sparsify + sign_consensus."""
    numel = base.numel()
    trims = []
    for other, density in zip(others, densities):
        if not sparsify or density >= 1:
            trims.append(None)
            continue
        threshold, before, after = magnitude_threshold(base, other, density, dtype, release)
        scale = None
        if rescale and not (before < 1e-7 or after < 1e-7):
            scale = before / after
        trims.append((threshold, scale))
    weight_column = torch.tensor(list(weights), dtype=dtype).reshape(-1, 1)
    out = torch.empty(numel, dtype=dtype)
    for start, stop in _chunks(numel):
        b = base[start:stop].to(dtype)
        deltas = torch.empty((len(others), stop - start), dtype=dtype)
        for i, (other, trim) in enumerate(zip(others, trims)):
            delta = other[start:stop].to(dtype) - b
            if trim is not None:
                threshold, scale = trim
                delta.mul_(delta.abs().float() >= threshold)
                if scale is not None:
                    delta.mul_(scale)
            deltas[i] = delta
        deltas.mul_(weight_column)
        if sign_consensus:
            majority = (deltas.sum(dim=0) >= 0).to(dtype) * 2 - 1
            mask = deltas.sign() == majority
            mixed = (deltas * mask).sum(dim=0)
            divisor = (weight_column * mask).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = deltas.sum(dim=0)
            divisor = weight_column.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if normalize:
            mixed /= divisor
        if lambda_ != 1:
            mixed *= lambda_
        out[start:stop] = b + mixed
        release(start, stop)
    return out
