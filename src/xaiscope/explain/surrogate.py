"""LIME and KernelSHAP surrogates on superpixels, sampled and evaluated in batches.

For one image ``x`` with ``K`` superpixels (ids ``seg``) and a fill ``b`` (the baseline),
a sample is a binary vector ``z`` in ``{0, 1}^K``: superpixel ``k`` keeps the image where
``z_k = 1`` and shows the fill where ``z_k = 0``, ``x_z = z[seg] * x + (1 - z[seg]) * b``.
With ``S`` samples ``Z [S, K]``, model outputs ``f_y(x_z)`` and sample weights ``w``, a
linear surrogate ``f_y(x_z) ~ c + sum_k beta_k z_k`` is fitted by weighted least squares
and every pixel of superpixel ``k`` gets ``beta_k`` (all channels alike).

- **LIME** (Ribeiro et al. 2016, arXiv:1602.04938; Captum's ``Lime`` defaults):
  ``z_k ~ Bernoulli(1/2)`` independently, ``w = exp(-d^2 / (2 sigma^2))`` with the cosine
  distance ``d = 1 - cos(x, x_z)`` of the flattened inputs and ``sigma = 1``; the surrogate
  is ridge regression with ``alpha`` (the reference ``lime_image`` uses ridge with alpha 1)
  or lasso.
- **KernelSHAP** (Lundberg & Lee 2017, arXiv:1705.07874; Captum's ``KernelShap``): the
  first two samples are ``z = 1`` and ``z = 0`` with weight ``10^6`` (so the fit meets
  ``c + sum beta = f(x)`` and ``c = f(b)`` up to that weight: efficiency); every further
  sample draws its number of ones ``m`` in ``1 .. K-1`` with probability proportional to
  ``(K - 1) / (m (K - m))`` and a uniform subset of that size, weight 1, which is the
  Shapley kernel ``(K - 1) / (m (K - m) C(K, m))`` by sampling; ordinary least squares.

Model passes: ``n_samples`` per image, sent ``batch_size`` perturbed copies per call
(one image's copies per call). The draws come from torch's generator, which the
explainer seeds from its ``seed`` (images in the order given).

Both are written here rather than called through Captum because Captum draws, builds
and weighs every sample with a Python-level call: on ``small_cnn3d`` that was a third of
the model's time, and with the segmentation it put LIME at 1.6-2.3x its pass floor.
"""

from __future__ import annotations

import numpy as np
import torch

from xaiscope.models.forward import forward

#: weight of the all-kept and all-removed samples in KernelSHAP (Captum's ``inf_weight``)
ENDPOINT_WEIGHT = 1e6


def lime_samples(n: int, k: int, device: torch.device) -> tuple[torch.Tensor, None]:
    """``n`` independent Bernoulli(1/2) vectors ``[n, k]`` (bool); LIME weighs them afterwards."""
    return torch.rand(n, k).lt(0.5).to(device), None


def kernel_shap_samples(n: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, k]`` vectors (bool) and their weights: all ones, all zeros (weight 1e6), then
    Shapley-kernel draws (weight 1); see the module docstring."""
    z = torch.zeros(n, k, dtype=torch.bool)
    z[0] = True
    w = torch.ones(n, dtype=torch.float64)
    w[: min(n, 2)] = ENDPOINT_WEIGHT
    if n > 2 and k > 1:
        m = torch.arange(1, k, dtype=torch.float64)
        sizes = torch.multinomial((k - 1) / (m * (k - m)), n - 2, replacement=True) + 1
        ranks = torch.rand(n - 2, k).argsort(1).argsort(1)  # a uniform random order per sample
        z[2:] = ranks < sizes.view(-1, 1)
    return z.to(device), w.to(device)


def cosine_kernel(x: torch.Tensor, xz: torch.Tensor, width: float = 1.0) -> torch.Tensor:
    """LIME's weights ``exp(-(1 - cos(x, x_z))^2 / (2 width^2))`` for copies ``xz [B, ...]`` of ``x [1, ...]``."""
    cos = torch.nn.functional.cosine_similarity(xz.flatten(1).double(), x.flatten(1).double(), dim=1)
    return torch.exp(-((1 - cos) ** 2) / (2 * width**2))


def fit_linear(z: np.ndarray, f: np.ndarray, w: np.ndarray, surrogate: str, alpha: float) -> np.ndarray:
    """Coefficients ``beta [k]`` of the weighted linear fit ``f ~ c + z beta`` (scikit-learn,
    intercept fitted): ``ridge``/``lasso`` with ``alpha``, ``ols`` unregularised."""
    from sklearn.linear_model import Lasso, LinearRegression, Ridge

    model = {"ridge": lambda: Ridge(alpha=alpha), "lasso": lambda: Lasso(alpha=alpha), "ols": LinearRegression}[
        surrogate
    ]()
    model.fit(z, f, sample_weight=w)
    return np.asarray(model.coef_, dtype=np.float64).reshape(-1)


def explain_one(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    seg: torch.Tensor,
    base: torch.Tensor,
    *,
    kind: str,
    n_samples: int,
    batch_size: int,
    surrogate: str,
    alpha: float,
) -> torch.Tensor:
    """The surrogate's map ``[1, C, *spatial]`` of one image ``x [1, C, *spatial]`` for target
    ``y [1]``; ``seg [*spatial]`` superpixel ids, ``base`` the fill like ``x``; ``kind`` is
    ``lime`` or ``kernel_shap``."""
    ids, inverse = torch.unique(seg, return_inverse=True)
    k = ids.numel()
    draw = lime_samples if kind == "lime" else kernel_shap_samples
    z, w = draw(n_samples, k, x.device)
    outs, sims = [], []
    for start in range(0, n_samples, batch_size):
        keep = z[start : start + batch_size][:, inverse].unsqueeze(1)  # [B, 1, *spatial]
        xz = torch.where(keep, x, base)
        outs.append(forward(model, xz, batch_size=batch_size).double()[:, int(y)])
        if kind == "lime":
            sims.append(cosine_kernel(x, xz))
    f = torch.cat(outs)
    w = torch.cat(sims) if kind == "lime" else w
    beta = fit_linear(z.double().cpu().numpy(), f.cpu().numpy(), w.cpu().numpy(), surrogate, alpha)
    coef = torch.as_tensor(beta, dtype=x.dtype, device=x.device)
    return coef[inverse].unsqueeze(0).unsqueeze(0).expand_as(x).clone()
