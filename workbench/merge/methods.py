"""The native merge methods: pure functions from input tensors to one merged tensor.

Each reproduces mergekit 0.1.5's arithmetic (mergekit/merge_methods/linear.py, slerp.py,
generalized_task_arithmetic.py, sparsify.py): the same dtypes and, where it matters for the
result, the same order of operations, so float32 results agree to rounding and bfloat16
results to at most one rounding step.
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
    """Weighted sum in float32, divided by the weight sum when ``normalize``.

    mergekit accumulates into zeros with addcmul; starting from the first product instead
    gives the same values and saves a pass."""
    acc = _accumulator_dtype(dtype)
    coefficients = torch.tensor(list(weights), dtype=torch.float32).to(acc)
    denominator = coefficients.sum()
    numel = tensors[0].numel()
    out = torch.empty(numel, dtype=dtype)
    for start, stop in _chunks(numel):
        result = out[start:stop] if acc == dtype else torch.empty(stop - start, dtype=acc)
        torch.mul(tensors[0][start:stop].to(dtype).to(acc), coefficients[0], out=result)
        for tensor, coefficient in zip(tensors[1:], coefficients[1:]):
            result.addcmul_(tensor[start:stop].to(dtype), coefficient)
        if normalize:
            result.div_(denominator)
        if acc != dtype:
            out[start:stop] = result
        release(start, stop)
    return out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dtype: torch.dtype,
          release: Release = _keep, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation from v0 (t=0, the base) to v1 (t=1) over the whole tensor;
    nearly colinear or antipodal pairs (|cos| > dot_threshold) interpolate linearly.

    The cosine is summed from normalized products chunk by chunk exactly as mergekit does:
    any other order changes the coefficients in their last bit, which is enough to move
    near-zero outputs (where the two products cancel) by many bfloat16 steps."""
    acc = _accumulator_dtype(dtype)
    numel = v0.numel()
    t_ = torch.tensor([t], dtype=torch.float32).reshape(-1, 1).to(acc)

    def rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (v0[start:stop].to(dtype).to(acc).reshape(1, -1),
                v1[start:stop].to(dtype).to(acc).reshape(1, -1))

    if numel == 0:
        return torch.empty(0, dtype=dtype)
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
        dot_parts.append(torch.div(x, norm_a).mul_(torch.div(y, norm_b)).sum(dim=1, keepdim=True))
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
        result = torch.mul(x, coef_a).add_(torch.mul(y, coef_b))
        out[start:stop] = result.reshape(-1)
        release(start, stop)
    return out


def magnitude_threshold(base: torch.Tensor, other: torch.Tensor, density: float, dtype: torch.dtype,
                        rescale: bool = False, release: Release = _keep) -> tuple[float, torch.Tensor | None]:
    """The smallest |other - base| that TIES' magnitude trim keeps at ``density``, and with
    ``rescale`` the factor L1(task vector) / L1(trimmed task vector) (None when either is
    below mergekit's 1e-7).

    Selection runs in place (numpy's introselect, O(n)) on a float32 buffer of magnitudes:
    one tensor of scratch instead of mergekit's full argsort and its index arrays.
    """
    numel = base.numel()
    keep = max(1, int(density * numel))
    magnitudes = torch.empty(numel, dtype=torch.float32)
    for start, stop in _chunks(numel):
        segment = magnitudes[start:stop]
        if dtype == torch.float32:
            torch.sub(other[start:stop].float(), base[start:stop].float(), out=segment).abs_()
        else:
            segment.copy_((other[start:stop].to(dtype) - base[start:stop].to(dtype)).abs())
        release(start, stop)
    before = magnitudes.sum().to(dtype) if rescale else None
    values = magnitudes.numpy()
    values.partition(numel - keep)
    threshold = float(values[numel - keep])
    if before is None:
        return threshold, None
    after = magnitudes[magnitudes >= threshold].sum().to(dtype)
    return threshold, None if before < 1e-7 or after < 1e-7 else before / after


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _zero_below(delta: torch.Tensor, threshold: float) -> None:
    """Zero, in place, every element with |x| < threshold (a magnitude of this dtype).

    hardshrink zeroes |x| <= lambd in one fast pass; with lambd the dtype's next value
    below the threshold that is exactly |x| < threshold. (float64: mergekit compares
    float32-rounded magnitudes, so do the same, more slowly.)"""
    if delta.dtype not in _SAME_WIDTH_INT:
        delta.mul_(delta.abs().float() >= threshold)
        return
    if threshold <= 0:
        return
    bits = torch.tensor([threshold], dtype=delta.dtype).view(_SAME_WIDTH_INT[delta.dtype])
    below = float((bits - 1).view(delta.dtype))
    torch.hardshrink(delta, below, out=delta)


def task_arithmetic(base: torch.Tensor, others: Sequence[torch.Tensor], weights: Sequence[float],
                    densities: Sequence[float], dtype: torch.dtype, *, sign_consensus: bool,
                    sparsify: bool, normalize: bool, lambda_: float = 1.0, rescale: bool = False,
                    release: Release = _keep) -> torch.Tensor:
    """Task vectors (other - base), magnitude-trimmed to ``density`` when ``sparsify``,
    weighted, with TIES' sign election ('sum': the sign of the weighted sum) and disjoint
    mean when ``sign_consensus``, divided by the summed weights when ``normalize``, scaled
    by ``lambda_`` and added back to the base. ties = sparsify + sign_consensus."""
    numel = base.numel()
    trims = [magnitude_threshold(base, other, density, dtype, rescale, release)
             if sparsify and density < 1 else None for other, density in zip(others, densities)]
    weight_column = torch.tensor(list(weights), dtype=dtype).reshape(-1, 1)
    out = torch.empty(numel, dtype=dtype)
    for start, stop in _chunks(numel):
        b = base[start:stop].to(dtype)
        deltas = torch.empty((len(others), stop - start), dtype=dtype)
        for delta, other, trim in zip(deltas, others, trims):
            torch.sub(other[start:stop].to(dtype), b, out=delta)
            if trim is not None:
                threshold, scale = trim
                _zero_below(delta, threshold)
                if scale is not None:
                    delta.mul_(scale)
        deltas.mul_(weight_column)
        if sign_consensus:
            majority = (deltas.sum(dim=0) >= 0).to(dtype) * 2 - 1
            # Masks as floats, not bools: mixed bool/float arithmetic is several times slower.
            mask = (deltas.sign() == majority).to(dtype)
            mixed = (deltas * mask).sum(dim=0)
            divisor = (weight_column * mask).sum(dim=0)
            divisor.masked_fill_(divisor == 0, 1)
        else:
            mixed = deltas.sum(dim=0)
            divisor = weight_column.sum(dim=0)
            divisor.masked_fill_(divisor.abs() < 1e-8, 1)
        if normalize:
            mixed /= divisor
        if lambda_ != 1:
            mixed *= lambda_
        torch.add(b, mixed, out=out[start:stop])
        release(start, stop)
    return out
