"""xaiscope: explain biomedical image classifiers and measure how good the explanations are.

Layers (imports point downwards only): ``data``, ``models`` -> ``explain`` ->
``evaluate`` -> ``analyses`` -> ``run`` -> ``report`` -> ``commands`` -> ``cli``.
"""

__version__ = "0.1.0"

from xaiscope.errors import XaiscopeError

__all__ = ["XaiscopeError", "__version__"]
