"""Every setting of the ground-truth benchmark, with defaults and validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from xaiscope.errors import ConfigError

RULES = {"shape": ("0_regular", "1_irregular"), "size": ("0_small", "1_large")}


def parse_range(text: str | int | tuple | list, name: str = "lesions") -> tuple[int, int]:
    """``"1-3"`` -> ``(1, 3)``; ``"2"`` or ``2`` -> ``(2, 2)``."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        lo, hi = text
    elif isinstance(text, int):
        lo = hi = text
    else:
        lo_s, sep, hi_s = str(text).strip().partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ConfigError(f"--{name} must look like 1-3 or 2, got {text!r}.") from None
    return int(lo), int(hi)


@dataclass(frozen=True)
class BenchmarkParams:
    """Settings of the benchmark (all of them go into ``benchmark.json``).

    Parameters
    ----------
    n_train, n_test : images per split (classes balanced, +-1).
    size : image side in pixels.
    background : ``retina``, ``cell``, ``ihc``, ``mri``, ``noise`` or ``folder:PATH``.
    alpha : lesion mixing strength in [0, 1]: ``x = b + alpha * m * (v - b)``.
    lesions : (min, max) lesions per image, drawn uniformly, same for both classes.
    confounder_rate : share of class-1 images that carry a corner marker (class 0 never).
    aligned : no crops or flips; class ``k``'s lesions are centred in the ``k``-th vertical band
        of the foreground.
    seed : fixes everything.
    rule : ``shape`` (class 0 ellipses, class 1 irregular outlines, same areas) or
        ``size`` (class 0 the smaller half of the area range, class 1 the larger half,
        outlines drawn half regular, half irregular in both classes).
    radius : (min, max) radius of the equal-area disc, as a fraction of ``size``.
    intensity : (min, max) lesion intensity ``v`` (background is mapped to about 0.1-0.7).
    edge : width in pixels of the soft ramp inside the outline.
    irregularity : summed amplitude of the outline harmonics of irregular lesions.
    jitter : intensity jitter: gain ``U(1-j, 1+j)`` and offset ``U(-j/2, j/2)`` per image.
    noise : SD of added pixel noise.
    zoom : source's shorter side in multiples of ``size`` before cropping (None: per source).
    annotators : synthetic annotators (0: none); see :mod:`xaiscope.data.benchmark.annotators`.
    """

    n_train: int = 2000
    n_test: int = 500
    size: int = 64
    background: str = "retina"
    alpha: float = 0.5
    lesions: tuple[int, int] = (1, 3)
    confounder_rate: float = 0.0
    aligned: bool = False
    seed: int = 0
    rule: str = "shape"
    radius: tuple[float, float] = (0.06, 0.11)
    intensity: tuple[float, float] = (0.75, 0.95)
    edge: float = 1.5
    irregularity: float = 0.6
    jitter: float = 0.2
    noise: float = 0.01
    zoom: float | None = None
    annotators: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs) -> "BenchmarkParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            from xaiscope.errors import did_you_mean

            raise ConfigError(f"Unknown benchmark setting {unknown[0]!r}{did_you_mean(unknown[0], known)}.")
        if "lesions" in kwargs:
            kwargs["lesions"] = parse_range(kwargs["lesions"])
        for key in ("radius", "intensity"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs).validate()

    @property
    def classes(self) -> list[str]:
        return list(RULES[self.rule])

    def validate(self) -> "BenchmarkParams":
        from xaiscope.data.benchmark.backgrounds import parse_background

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.n_train >= 2, f"n_train must be at least 2 (one image per class), got {self.n_train}.")
        need(self.n_test >= 0, f"n_test must not be negative, got {self.n_test}.")
        need(16 <= self.size <= 1024, f"size must be between 16 and 1024 pixels, got {self.size}.")
        need(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}.")
        lo, hi = self.lesions
        need(1 <= lo <= hi <= 8, f"lesions must be a range within 1-8 with min <= max, got {lo}-{hi}.")
        need(0.0 <= self.confounder_rate <= 1.0, f"confounder_rate must be in [0, 1], got {self.confounder_rate}.")
        need(self.rule in RULES, f"rule must be one of {', '.join(RULES)}, got {self.rule!r}.")
        r0, r1 = self.radius
        need(
            0 < r0 <= r1 <= 0.25, f"radius must satisfy 0 < min <= max <= 0.25 (fractions of size), got {self.radius}."
        )
        need(
            r0 * self.size >= 1.5,
            f"radius min {r0} x size {self.size} is under 1.5 pixels; lesions would be invisible.",
        )
        v0, v1 = self.intensity
        need(0 <= v0 <= v1 <= 1, f"intensity must satisfy 0 <= min <= max <= 1, got {self.intensity}.")
        need(self.edge > 0, f"edge must be positive, got {self.edge}.")
        need(0 <= self.irregularity < 1, f"irregularity must be in [0, 1), got {self.irregularity}.")
        need(0 <= self.jitter < 1, f"jitter must be in [0, 1), got {self.jitter}.")
        need(self.noise >= 0, f"noise must not be negative, got {self.noise}.")
        need(0 <= self.annotators <= 16, f"annotators must be between 0 and 16, got {self.annotators}.")
        parse_background(self.background)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lesions"] = list(self.lesions)
        d["radius"] = list(self.radius)
        d["intensity"] = list(self.intensity)
        return d
