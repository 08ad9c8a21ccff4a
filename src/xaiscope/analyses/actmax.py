"""Activation maximisation with the regularisers of Yosinski et al. (2015).

Gradient ascent on the input ``x`` to maximise an objective ``J(x)``: a class score
(the logit by default, as in the paper) or the mean activation of one channel of a
layer. After each ascent step the image is regularised, in the paper's order:

1. L2 decay: ``x <- c + (1 - l2_decay) (x - c)``;
2. Gaussian blur every ``blur_every`` steps with standard deviation ``blur_sigma``;
3. small-norm clipping: pixels whose norm over channels ``||x_p - c||`` is below the
   ``norm_clip_pct`` percentile are set to ``c``;
4. small-contribution clipping: pixels whose contribution ``|sum_ch (x_p - c) g_p|``
   (first-order change of ``J`` when the pixel is set to ``c``) is below the
   ``contrib_clip_pct`` percentile are set to ``c``;
5. clipping to the valid input range ``clip_range``.

``c`` is the ``center`` (the "blank" value: 0, i.e. the mean, for normalised data).
The step is ``x <- x + lr * g / mean|g|`` (the gradient normalised by its mean absolute
value, as in DeepDream, so ``lr`` is the mean pixel change per step in input units
whatever the scale of the model's outputs). The start is ``c`` plus Gaussian noise of
standard deviation ``init_std * (hi - lo)``, drawn from a generator seeded with ``seed``.

Reference: J. Yosinski, J. Clune, A. Nguyen, T. Fuchs, H. Lipson, "Understanding Neural
Networks Through Deep Visualization", ICML Deep Learning Workshop 2015, arXiv:1506.06579.

Direction: higher ``J`` is the goal. Passes: ``steps`` forward+backward passes of one
image, plus one forward for the final value.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from xaiscope.errors import ConfigError, NumericalError, did_you_mean
from xaiscope.explain.references import gaussian_blur
from xaiscope.models.forward import forward
from xaiscope.models.state import eval_mode, model_device


@dataclass
class ActMaxResult:
    """The maximising image and the trajectory of the objective.

    ``image`` ``[C, H, W]``; ``objective`` ``[steps + 1]``: ``J`` before each step and
    after the last; ``probability``: softmax probability of ``target`` along the way
    (class objectives only); ``params``: every setting used.
    """

    image: torch.Tensor
    objective: list[float]
    probability: list[float] | None
    params: dict = field(default_factory=dict)
    passes: int = 0

    @property
    def start(self) -> float:
        return self.objective[0]

    @property
    def final(self) -> float:
        return self.objective[-1]


def _range_tensors(clip_range, channels: int, device, dtype):
    try:
        lo, hi = clip_range
        lo = torch.as_tensor(lo, dtype=dtype, device=device).reshape(-1)
        hi = torch.as_tensor(hi, dtype=dtype, device=device).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"clip_range must be (low, high), got {clip_range!r}.") from None
    if lo.numel() not in (1, channels) or hi.numel() not in (1, channels):
        raise ConfigError(
            f"clip_range bounds must be scalars or have one value per channel ({channels}), got {clip_range!r}."
        )
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo < hi).all()):
        raise ConfigError(f"clip_range must be finite with low < high, got {clip_range!r}.")
    shape = (1, -1, 1, 1)
    return lo.expand(channels).reshape(shape), hi.expand(channels).reshape(shape)


def _check(shape, steps, lr, l2_decay, blur_every, blur_sigma, norm_clip_pct, contrib_clip_pct, init_std, output):
    if len(tuple(shape)) != 3 or any((not isinstance(v, int)) or v < 1 for v in shape):
        raise ConfigError(f"shape must be three positive integers (C, H, W), got {shape!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}.")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr!r}.")
    if not 0 <= l2_decay < 1:
        raise ConfigError(f"l2_decay must lie in [0, 1), got {l2_decay!r}.")
    if not isinstance(blur_every, int) or blur_every < 0:
        raise ConfigError(f"blur_every must be a non-negative integer (0 = no blur), got {blur_every!r}.")
    if not blur_sigma >= 0:
        raise ConfigError(f"blur_sigma must be non-negative, got {blur_sigma!r}.")
    for name, v in (("norm_clip_pct", norm_clip_pct), ("contrib_clip_pct", contrib_clip_pct)):
        if not 0 <= v < 100:
            raise ConfigError(f"{name} must be a percentile in [0, 100), got {v!r}.")
    if not init_std >= 0:
        raise ConfigError(f"init_std must be non-negative, got {init_std!r}.")
    if output not in ("logit", "softmax", "log_softmax"):
        raise ConfigError(f"output must be 'logit', 'softmax' or 'log_softmax', got {output!r}.")


def _layer(model, layer):
    if isinstance(layer, torch.nn.Module):
        return layer
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        raise ConfigError(f"The model has no layer {layer!r}{did_you_mean(layer, names)}.")
    return model.get_submodule(layer)


def _clip_below_percentile(x: torch.Tensor, score: torch.Tensor, pct: float, center: torch.Tensor) -> torch.Tensor:
    """Set pixels whose ``score`` ``[1, 1, H, W]`` is below its ``pct`` percentile to ``center``."""
    if pct <= 0:
        return x
    thr = torch.quantile(score.flatten(), pct / 100.0)
    return torch.where(score < thr, center.expand_as(x), x)


def visualize(
    model: torch.nn.Module,
    target: int | None,
    *,
    shape: tuple[int, int, int],
    steps: int = 200,
    lr: float = 0.05,
    l2_decay: float = 0.01,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    clip_range=(0.0, 1.0),
    norm_clip_pct: float = 0.0,
    contrib_clip_pct: float = 0.0,
    seed: int = 0,
    channel: int | None = None,
    layer: str | torch.nn.Module | None = None,
    center=None,
    init_std: float = 0.05,
    output: str = "logit",
) -> ActMaxResult:
    """Synthesise an input that maximises a class score or a channel's mean activation.

    Parameters
    ----------
    model : nn.Module
        Left in the mode it was given in (evaluated in eval mode, parameters frozen
        during the run and restored after).
    target : int or None
        Class whose score is maximised (ignored when ``layer`` is given).
    shape : (C, H, W)
        Input shape.
    steps : int, default 200
        Gradient-ascent steps.
    lr : float, default 0.05
        Mean absolute pixel change per step (the gradient is divided by its mean absolute value).
    l2_decay : float in [0, 1), default 0.01
        Fraction of ``x - center`` removed after each step.
    blur_every : int, default 4
        Blur every this many steps (0: never).
    blur_sigma : float, default 0.5
        Standard deviation of the blur in pixels.
    clip_range : (low, high), default (0, 1)
        Valid input range; scalars or one value per channel.
    norm_clip_pct : float in [0, 100), default 0 (off)
        Pixels with norm below this percentile are set to ``center`` after each step.
    contrib_clip_pct : float in [0, 100), default 0 (off)
        Pixels with contribution below this percentile are set to ``center`` after each step.
    seed : int, default 0
        Seed of the random start; the same seed gives the same image.
    channel : int, optional
        With ``layer``: maximise the mean activation of this channel (default 0).
    layer : str or nn.Module, optional
        Module (name as in ``model.named_modules()``) whose channel activation is maximised.
    center : float or per-channel sequence, optional
        The blank value that decay pulls towards and clipping sets; default 0 clamped
        into ``clip_range`` (the mean for normalised data, black for data in [0, 1]).
    init_std : float, default 0.05
        Noise of the start, as a fraction of ``high - low``.
    output : ``"logit"`` (default), ``"softmax"`` or ``"log_softmax"``
        The class score maximised.

    Returns
    -------
    ActMaxResult
        ``image``, ``objective`` trajectory (``steps + 1`` values), ``probability``
        trajectory, ``params``. Passes: ``steps + 1``.
    """
    shape = tuple(int(v) if isinstance(v, (int, float)) and float(v).is_integer() else v for v in shape)
    _check(shape, steps, lr, l2_decay, blur_every, blur_sigma, norm_clip_pct, contrib_clip_pct, init_std, output)
    dev = model_device(model)
    dtype = torch.float32
    c = shape[0]
    lo, hi = _range_tensors(clip_range, c, dev, dtype)
    if center is None:
        cen = torch.zeros(1, c, 1, 1, dtype=dtype, device=dev).clamp(lo, hi)
    else:
        cen = torch.as_tensor(center, dtype=dtype, device=dev).reshape(-1)
        if cen.numel() not in (1, c):
            raise ConfigError(f"center must be a scalar or one value per channel ({c}), got {center!r}.")
        cen = cen.expand(c).reshape(1, c, 1, 1)
    if layer is None:
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ConfigError(f"The class to maximise must be a non-negative integer, got {target!r}.")
    else:
        channel = 0 if channel is None else channel
        if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
            raise ConfigError(f"channel must be a non-negative integer, got {channel!r}.")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = cen + init_std * (hi - lo) * torch.randn((1, *shape), generator=gen, dtype=dtype).to(dev)
    x = torch.maximum(torch.minimum(x, hi), lo)
    captured: dict[str, torch.Tensor] = {}
    module = _layer(model, layer) if layer is not None else None

    def hook(_m, _args, out):
        captured["a"] = out

    objective: list[float] = []
    probability: list[float] | None = [] if layer is None else None
    with eval_mode(model), contextlib.ExitStack() as stack:
        if module is not None:
            handle = module.register_forward_hook(hook)
            stack.callback(handle.remove)

        def evaluate(inp: torch.Tensor, grad: bool):
            out = forward(model, inp, batch_size=1, grad=grad)
            if layer is None:
                if target >= out.shape[1]:
                    raise ConfigError(
                        f"Class {target} is out of range: the model has {out.shape[1]} outputs (classes 0..{out.shape[1] - 1})."
                    )
                if output == "logit":
                    j = out[0, target]
                else:
                    j = out.log_softmax(1)[0, target] if output == "log_softmax" else out.softmax(1)[0, target]
                probability.append(float(out.detach().softmax(1)[0, target]))  # type: ignore[union-attr]
            else:
                a = captured.get("a")
                if not isinstance(a, torch.Tensor) or a.dim() < 2:
                    raise ConfigError(f"The layer {layer!r} did not produce a tensor with a channel axis.")
                if channel >= a.shape[1]:
                    raise ConfigError(f"channel {channel} is out of range: layer {layer!r} has {a.shape[1]} channels.")
                j = a[0, channel].mean()
            if not torch.isfinite(j):
                raise NumericalError("The activation-maximisation objective became NaN or infinite; lower lr.")
            return j

        for step in range(steps):
            xv = x.detach().requires_grad_(True)
            with torch.enable_grad():
                j = evaluate(xv, grad=True)
                (g,) = torch.autograd.grad(j, xv)
            objective.append(float(j.detach()))
            x = xv.detach() + lr * g / (g.abs().mean() + 1e-12)
            x = cen + (1 - l2_decay) * (x - cen)
            if blur_every and (step + 1) % blur_every == 0 and blur_sigma > 0:
                x = gaussian_blur(x, blur_sigma)
            x = _clip_below_percentile(x, (x - cen).norm(dim=1, keepdim=True), norm_clip_pct, cen)
            x = _clip_below_percentile(x, ((x - cen) * g).sum(dim=1, keepdim=True).abs(), contrib_clip_pct, cen)
            x = torch.maximum(torch.minimum(x, hi), lo)
        with torch.no_grad():
            objective.append(float(evaluate(x, grad=False)))
    params = {
        "target": target if layer is None else None,
        "layer": None if layer is None else str(layer),
        "channel": channel,
        "shape": list(shape),
        "steps": steps,
        "lr": lr,
        "l2_decay": l2_decay,
        "blur_every": blur_every,
        "blur_sigma": blur_sigma,
        "clip_range": [lo.flatten().tolist(), hi.flatten().tolist()],
        "norm_clip_pct": norm_clip_pct,
        "contrib_clip_pct": contrib_clip_pct,
        "seed": seed,
        "center": cen.flatten().tolist(),
        "init_std": init_std,
        "output": output,
    }
    return ActMaxResult(
        image=x[0].detach(), objective=objective, probability=probability, params=params, passes=steps + 1
    )
