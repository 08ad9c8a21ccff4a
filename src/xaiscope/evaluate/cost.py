"""Model passes per image as expressions: one object gives the number and the formula.

A :class:`Count` is built from the settings of a metric (:func:`setting`), the image
size (:data:`H`, :data:`W`; :data:`D` for volumes), the explainer's passes per image
(:data:`E`) and the number of layers with parameters (:data:`L`) with ``+``, ``*``, ``/``,
:func:`ceil`, :func:`floor` and :func:`smallest`. ``count(env)`` evaluates it for an
:class:`Env` and ``str(count)`` prints it, so the pass count of ``metric.passes()``, the
formula of ``xaiscope metrics`` and the README table all come from the same expression. A
count that needs an unknown quantity (no shape, no explainer, no model) is NaN.

Where volumes ``(C, D, H, W)`` count differently from images (voxels, cubes), a count is
made of both forms by :func:`per_dims` (e.g. ``H*W`` and ``D*H*W``); every expression built
from it keeps both, evaluates the one that fits the shape and prints the image formula
followed by ``; volumes: `` and the volume formula.

Each count has a ``kind``: ``"exact"``, ``"at most"`` (an upper bound: images that
stop early make fewer passes) or ``"about"`` (depends on the data, e.g. the number of
superpixels found); an expression takes the loosest kind of its parts.

>>> str(1 + setting("nr_samples") * (E + 1))
'1 + nr_samples * (E + 1)'
>>> str(ceil(H * W / setting("features_in_step")))
'ceil(H*W / features_in_step)'
>>> str(1 + per_dims(H * W, D * H * W))
'1 + H*W; volumes: 1 + D*H*W'
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

NAN = float("nan")

# operator precedence of a formula's outermost operation: sums bind loosest
_SUM, _PRODUCT, _ATOM = 1, 2, 3

#: how far a count can be trusted, tightest first
KINDS = ("exact", "at most", "about")


def _loosest(*counts: Count) -> str:
    return max((c.kind for c in counts), key=KINDS.index)


@dataclass(frozen=True)
class Env:
    """What a count is evaluated for: the settings, the image shape ``(C, H, W)`` or volume
    shape ``(C, D, H, W)`` (or None), the explainer's passes per image ``e`` and the number of
    layers ``layers`` (NaN when unknown)."""

    hparams: dict
    shape: tuple | None = None
    e: float = NAN
    layers: float = NAN

    @property
    def volume(self) -> bool:
        """The shape is a volume's ``(C, D, H, W)``."""
        return self.shape is not None and len(self.shape) == 4


class Count:
    """A pass count: ``self(env)`` -> float, ``str(self)`` -> its formula. ``text`` is the
    formula for images; ``vtext`` the one for volumes where it differs (else None)."""

    __slots__ = ("text", "value", "prec", "const", "shaped", "symbol", "kind", "vtext")

    def __init__(
        self,
        text: str,
        value: Callable[[Env], float],
        prec: int = _ATOM,
        *,
        const: float | None = None,
        shaped: bool = False,
        symbol: bool = False,
        kind: str = "exact",
        vtext: str | None = None,
    ):
        self.text, self.value, self.prec = text, value, prec
        self.const, self.shaped, self.symbol, self.kind = const, shaped, symbol, kind
        self.vtext = vtext

    def __call__(self, env: Env) -> float:
        return float(self.value(env))

    def __str__(self) -> str:
        return self.text if self.vtext is None else f"{self.text}; volumes: {self.vtext}"

    def __repr__(self) -> str:
        return f"Count({self.text!r})"

    def _in(self, prec: int, volume: bool = False) -> str:
        text = self.vtext if volume and self.vtext is not None else self.text
        return f"({text})" if self.prec < prec else text

    def _join(self, other: Count, op: str, f: Callable[[float, float], float], prec: int, right: int) -> Count:
        """``self op other``, ``other`` parenthesised when it binds looser than ``right``."""
        vtext = None
        if self.vtext is not None or other.vtext is not None:
            vtext = f"{self._in(prec, True)}{op}{other._in(right, True)}"
        return Count(
            f"{self._in(prec)}{op}{other._in(right)}",
            lambda env: f(self(env), other(env)),
            prec,
            shaped=self.shaped or other.shaped,
            kind=_loosest(self, other),
            vtext=vtext,
        )

    def _volume_text(self) -> str:
        return self.text if self.vtext is None else self.vtext

    def __add__(self, other) -> Count:
        other = count(other)
        if self.const is not None and other.const is not None:
            return number(self.const + other.const)
        if self.const == 0 or other.const == 0:
            return other if self.const == 0 else self
        return self._join(other, " + ", operator.add, _SUM, _SUM)

    def __radd__(self, other) -> Count:
        return count(other) + self

    def __mul__(self, other) -> Count:
        other = count(other)
        if self.const is not None and other.const is not None:
            return number(self.const * other.const)
        if self.const == 1 or other.const == 1:
            return other if self.const == 1 else self
        # a factor of image sizes prints tight (H*W, share*H*W, ceil(H/p)*ceil(W/p)), others spaced
        op = "*" if other.shaped and (self.shaped or self.symbol) else " * "
        return self._join(other, op, operator.mul, _PRODUCT, _PRODUCT)

    def __rmul__(self, other) -> Count:
        return count(other) * self

    def __truediv__(self, other) -> Count:
        op = "/" if self.prec == _ATOM else " / "
        return self._join(count(other), op, operator.truediv, _PRODUCT, _PRODUCT + 1)

    def when(self, name: str, value, extra: Count) -> Count:
        """``self``, plus ``extra`` where setting ``name`` equals ``value``."""
        vtext = None
        if self.vtext is not None or extra.vtext is not None:
            vtext = f"{self._volume_text()} (+ {extra._volume_text()} for {name}={value})"
        return Count(
            f"{self.text} (+ {extra.text} for {name}={value})",
            lambda env: self(env) + (extra(env) if env.hparams[name] == value else 0.0),
            _SUM,
            shaped=self.shaped or extra.shaped,
            kind=_loosest(self, extra),
            vtext=vtext,
        )

    def at_most(self) -> Count:
        """An upper bound: the same number, the formula read as "at most"."""
        kind = "about" if self.kind == "about" else "at most"
        vtext = None if self.vtext is None else f"{self.vtext} at most"
        return Count(f"{self.text} at most", self.value, _SUM, shaped=self.shaped, kind=kind, vtext=vtext)

    def about(self, why: str) -> Count:
        """An estimate: the same number, the formula followed by ``why`` it may differ."""
        vtext = None if self.vtext is None else f"{self.vtext} ({why})"
        return Count(f"{self.text} ({why})", self.value, _SUM, shaped=self.shaped, kind="about", vtext=vtext)


def number(v: float) -> Count:
    """A constant."""
    v = int(v) if float(v).is_integer() else v
    return Count(str(v), lambda env: v, const=v)


def count(v) -> Count:
    """``v`` as a :class:`Count` (numbers become constants)."""
    return v if isinstance(v, Count) else number(v)


def setting(name: str) -> Count:
    """The value of the metric's setting ``name``."""
    return Count(name, lambda env: NAN if env.hparams[name] == "auto" else env.hparams[name], symbol=True)


def symbol(
    text: str, value: Callable[[Env], float], shaped: bool = False, kind: str = "exact", vtext: str | None = None
) -> Count:
    """A quantity printed as ``text`` (e.g. ``len(range(1, 100, percentage_step))``; ``vtext``
    where volumes print it differently)."""
    return Count(text, value, shaped=shaped, symbol=True, kind=kind, vtext=vtext)


def per_dims(image: Count, volume: Count) -> Count:
    """``image`` for images ``(C, H, W)`` and ``volume`` for volumes ``(C, D, H, W)``: the value
    that fits the shape (the image form where none is given), both formulas in the text."""
    return Count(
        image.text,
        lambda env: volume(env) if env.volume else image(env),
        image.prec,
        shaped=image.shaped or volume.shaped,
        symbol=image.symbol,
        kind=_loosest(image, volume),
        vtext=volume._volume_text(),
    )


def _nan_safe(f: Callable[[float], float]) -> Callable[[float], float]:
    return lambda v: v if math.isnan(v) else float(f(v))


def _call(name: str, f: Callable[[float], float], c: Count) -> Count:
    g = _nan_safe(f)
    vtext = None if c.vtext is None else f"{name}({c.vtext})"
    return Count(f"{name}({c.text})", lambda env: g(c(env)), shaped=c.shaped, kind=c.kind, vtext=vtext)


def ceil(c: Count) -> Count:
    return _call("ceil", math.ceil, c)


def floor(c: Count) -> Count:
    return _call("floor", math.floor, c)


def smallest(a: Count, b: Count) -> Count:
    a, b = count(a), count(b)
    vtext = None if a.vtext is None and b.vtext is None else f"min({a._volume_text()}, {b._volume_text()})"
    return Count(
        f"min({a.text}, {b.text})",
        lambda env: _min(a(env), b(env)),
        shaped=a.shaped or b.shaped,
        kind=_loosest(a, b),
        vtext=vtext,
    )


def _min(u: float, v: float) -> float:
    return NAN if math.isnan(u) or math.isnan(v) else min(u, v)


def _dim(i: int) -> Callable[[Env], float]:
    """Spatial size ``i`` counted from the last axis (-1: W, -2: H, -3: D, which is 1 for images)."""
    return lambda env: NAN if env.shape is None else float(env.shape[i]) if len(env.shape) > -i else 1.0


D = Count("D", _dim(-3), shaped=True, symbol=True)
H = Count("H", _dim(-2), shaped=True, symbol=True)
W = Count("W", _dim(-1), shaped=True, symbol=True)
E = symbol("E", lambda env: env.e)
L = symbol("L", lambda env: env.layers)
