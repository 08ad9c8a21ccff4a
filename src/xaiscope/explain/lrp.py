"""Layer-wise relevance propagation, computed by Zennit.

The output relevance is the target logit (one-hot times the output), so with
conserving rules the input relevance sums to ``f_y(x)`` (Bach et al. 2015,
doi:10.1371/journal.pone.0130140; Montavon et al. 2019, doi:10.1007/978-3-030-28954-6_10).
Batch norm is merged into the preceding linear layer by a canonizer: Zennit's
ResNetCanonizer for torchvision ResNets, VGGCanonizer for torchvision VGGs, xaiscope's
:class:`~xaiscope.explain.lrp_canonizers.VideoResNetCanonizer` for torchvision's 3D video
ResNets (``r3d_18`` and kin) and SequentialMergeBatchNorm otherwise; DenseNets (torchvision's
and MONAI's, 2D or 3D) get none (no canonizer exists, so their relevance is only
approximately conserved). The rules apply to ``Conv3d``/``BatchNorm3d`` as to their 2D
kin. A canonizer that fails half-way leaves the model's weights as they were. One pass per
image. Transformers are refused here; ``attn_lrp`` (``lrp_attention.py``) explains them.
"""

from __future__ import annotations

import torch
from torch import nn

from xaiscope.errors import MethodError
from xaiscope.explain.base import Explainer, Param, register
from xaiscope.explain.chunking import per_chunk


def canonizers_for(model: nn.Module) -> list:
    """The Zennit canonizers that fit ``model``."""
    from torchvision.models import VGG, ResNet
    from torchvision.models.video import VideoResNet
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    from xaiscope.explain.lrp_canonizers import VideoResNetCanonizer

    if isinstance(model, ResNet):
        return [ResNetCanonizer()]
    if isinstance(model, VideoResNet):
        return [VideoResNetCanonizer()]
    if isinstance(model, VGG):
        return [VGGCanonizer()]
    if is_densenet(model):
        return []  # no canonizer exists; batch norm before concatenation cannot be merged
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return [SequentialMergeBatchNorm()]
    return []


def is_densenet(model: nn.Module) -> bool:
    """A DenseNet (torchvision's or MONAI's, any number of spatial dims): pre-activation batch
    norm after concatenation, which no canonizer merges."""
    return any(c.__name__ == "DenseNet" for c in type(model).__mro__)


_LRP_LAYERS = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Flatten,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
)


def supports_lrp(model: nn.Module) -> bool:
    """Whether the LRP composites apply to ``model`` with conserved relevance: every layer is
    one the composites have a rule for (convolutions, linear layers, batch norm merged by a
    canonizer, ReLU, pooling, flatten, dropout, identity), and the model is not a DenseNet
    (no canonizer exists for it). Models with other layers (attention, other activations)
    are not; nor are functional operations inside ``forward`` other than a torchvision
    ResNet's additions, which cannot be seen from the modules."""
    if is_densenet(model):
        return False
    leaves = [m for m in model.modules() if not list(m.children())]
    return bool(leaves) and all(isinstance(m, _LRP_LAYERS) for m in leaves)


class _ZennitExplainer(Explainer):
    """Shared mechanism: a Zennit composite, a Gradient attributor, logit relevance."""

    family, library = "lrp", "zennit"

    def composite(self, model: nn.Module, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def applies_to(cls, model: nn.Module) -> str | None:
        """LRP's rules here are those of CNN layers; attention (softmax, the attention product,
        layer norm) needs its own rules (AttnLRP: the ``attn_lrp`` method, ``lrp_attention.py``),
        so a transformer is refused rather than given a CNN rule's output."""
        if any(hasattr(m, "qkv") and hasattr(m, "num_heads") for m in model.modules()):
            return (
                f"{cls.name} has LRP rules for CNN layers only; attention layers need AttnLRP's rules: "
                "use attn_lrp for transformers."
            )
        return super().applies_to(model)

    def _attribute(self, model, x, y):
        from zennit.attribution import Gradient

        why = self.applies_to(model)
        if why is not None:
            raise MethodError(why)
        composite = self.composite(model, x)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def run(xb, yb):
            def logit_relevance(out: torch.Tensor) -> torch.Tensor:
                return torch.zeros_like(out).scatter_(1, yb.view(-1, 1), 1.0) * out.detach()

            with Gradient(model=model, composite=composite) as attributor:
                _, attr = attributor(xb.detach(), logit_relevance)  # one forward and one backward
            return attr

        try:
            return per_chunk(run, x, y, self.batch_size)
        except Exception:
            model.load_state_dict(saved)  # a canonizer that failed half-way must not leave merged weights
            raise


@register
class LRPEpsilonPlusFlat(_ZennitExplainer):
    """Epsilon rule on dense layers, z+ on convolutions, flat on the first layer (Zennit EpsilonPlusFlat)."""

    name = "lrp_epsilon_plus_flat"
    params = {"epsilon": Param(1e-6, float, "epsilon stabiliser", low=0.0)}

    def composite(self, model, x):
        from zennit.composites import EpsilonPlusFlat

        return EpsilonPlusFlat(epsilon=self.hparams["epsilon"], canonizers=canonizers_for(model))


@register
class LRPEpsilonGammaBox(_ZennitExplainer):
    """Epsilon on dense layers, gamma on convolutions, z^B (box) on the first layer (Zennit EpsilonGammaBox).

    ``low``/``high`` default to the smallest and largest value of the images in one call."""

    name = "lrp_epsilon_gamma_box"
    params = {
        "epsilon": Param(1e-6, float, "epsilon stabiliser", low=0.0),
        "gamma": Param(0.25, float, "gamma of the gamma rule", low=0.0),
        "low": Param(None, float, "lowest pixel value (None: data minimum)", nullable=True),
        "high": Param(None, float, "highest pixel value (None: data maximum)", nullable=True),
    }

    def composite(self, model, x):
        from zennit.composites import EpsilonGammaBox

        h = self.hparams
        low = float(x.min()) if h["low"] is None else h["low"]
        high = float(x.max()) if h["high"] is None else h["high"]
        return EpsilonGammaBox(
            low=low, high=high, epsilon=h["epsilon"], gamma=h["gamma"], canonizers=canonizers_for(model)
        )


@register
class LRPAlpha2Beta1Flat(_ZennitExplainer):
    """Epsilon on dense layers, alpha=2 beta=1 on convolutions, flat on the first layer (Zennit EpsilonAlpha2Beta1Flat)."""

    name = "lrp_alpha2_beta1_flat"
    params = {"epsilon": Param(1e-6, float, "epsilon stabiliser", low=0.0)}

    def composite(self, model, x):
        from zennit.composites import EpsilonAlpha2Beta1Flat

        return EpsilonAlpha2Beta1Flat(epsilon=self.hparams["epsilon"], canonizers=canonizers_for(model))
