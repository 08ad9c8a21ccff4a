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


def from_kwargs(cls, kwargs: dict, what: str, **parsers):
    """``cls(**kwargs).validate()`` after one sentence for an unknown setting (named as a
    ``what`` setting) and the usual conversions: ``lesions`` ranges, float pairs for
    ``radius``/``intensity``, and ``parsers`` (setting -> function) for the rest."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        from xaiscope.errors import did_you_mean

        raise ConfigError(f"Unknown {what} setting {unknown[0]!r}{did_you_mean(unknown[0], known)}.")
    parsers = {"lesions": parse_range, **{k: _floats for k in ("radius", "intensity")}, **parsers}
    kwargs = {k: parsers[k](v) if k in parsers else v for k, v in kwargs.items()}
    return cls(**kwargs).validate()


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


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
        return from_kwargs(cls, kwargs, "benchmark")

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


TISSUES = ("wm", "gm_wm")
MNI_2MM_DHW = (95, 117, 99)  # nilearn's 2 mm MNI152 template as (D, H, W) = (k, j, i) voxels
# the box around its brain mask (plus 2 voxels; the brain stem reaches the lowest slice) that is resampled
MNI_BOX = ((0, 80), (12, 106), (11, 88))
CLASSES_3D = ("0_regular", "1_irregular")


def parse_size3(text: str | int | tuple | list) -> tuple[int, int, int]:
    """``"48x56x48"``, ``"48,56,48"`` or ``(48, 56, 48)`` -> ``(D, H, W)``."""
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = str(text).lower().replace("x", ",").split(",")
    try:
        dhw = tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        dhw = ()
    if len(dhw) != 3:
        raise ConfigError(f"--size of a volume must be D,H,W (three voxel counts such as 48,56,48), got {text!r}.")
    return dhw


@dataclass(frozen=True)
class VolumeParams:
    """Settings of the 3D benchmark (all of them go into ``benchmark.json``).

    Parameters
    ----------
    n_train, n_test : volumes per split (classes balanced, +-1).
    size : ``(D, H, W)`` voxels the box around the brain of the MNI152 template (2 mm,
        80 x 94 x 77 voxels as D, H, W) is resampled to.
    alpha : lesion mixing strength in [0, 1]: ``x = t + alpha * m * (v - t)``.
    lesions : (min, max) lesions per volume, drawn uniformly, same for both classes.
    confounder_rate : share of class-1 volumes that carry a corner marker (class 0 never).
    seed : fixes everything.
    tissue : where lesion centres lie: ``wm`` (white-matter probability > 0.5) or ``gm_wm``
        (grey or white matter probability > 0.5); the whole lesion stays in the brain mask.
    radius : (min, max) radius in mm of the sphere of equal volume (volume uniform in between).
    intensity : (min, max) lesion intensity ``v`` (brain is mapped to about 0.1-0.5, white
        matter about 0.45; the default makes bright lesions, as contrast-enhancing lesions on T1).
    edge : the soft ramp's share of the radius (see :mod:`.lesions3d`).
    irregularity : summed amplitude of the plane waves of lobulated lesions.
    jitter : intensity jitter: gain ``U(1-j, 1+j)`` and offset ``U(-j/2, j/2)`` per volume.
    noise : SD of added voxel noise.
    bias : strength of the multiplicative bias field ``exp(sum_t c_t P_t)``, ``c_t ~ U(-bias/3, bias/3)``
        over the 9 monomials of degree 1-2 of the coordinates scaled to [-1, 1].
    """

    n_train: int = 800
    n_test: int = 200
    size: tuple[int, int, int] = (32, 40, 32)
    alpha: float = 1.0
    lesions: tuple[int, int] = (1, 3)
    confounder_rate: float = 0.0
    seed: int = 0
    tissue: str = "wm"
    radius: tuple[float, float] = (15.0, 22.0)
    intensity: tuple[float, float] = (0.9, 1.0)
    edge: float = 0.15
    irregularity: float = 0.9
    jitter: float = 0.05
    noise: float = 0.02
    bias: float = 0.1

    @classmethod
    def from_kwargs(cls, **kwargs) -> "VolumeParams":
        return from_kwargs(cls, kwargs, "3D benchmark", size=parse_size3)

    @property
    def classes(self) -> list[str]:
        return list(CLASSES_3D)

    def validate(self) -> "VolumeParams":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.n_train >= 2, f"n_train must be at least 2 (one volume per class), got {self.n_train}.")
        need(self.n_test >= 0, f"n_test must not be negative, got {self.n_test}.")
        need(
            all(16 <= s <= 256 for s in self.size),
            f"size must be three voxel counts between 16 and 256, got {list(self.size)}.",
        )
        need(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}.")
        lo, hi = self.lesions
        need(1 <= lo <= hi <= 6, f"lesions must be a range within 1-6 with min <= max, got {lo}-{hi}.")
        need(0.0 <= self.confounder_rate <= 1.0, f"confounder_rate must be in [0, 1], got {self.confounder_rate}.")
        need(self.tissue in TISSUES, f"tissue must be one of {', '.join(TISSUES)}, got {self.tissue!r}.")
        r0, r1 = self.radius
        need(0 < r0 <= r1 <= 40, f"radius must satisfy 0 < min <= max <= 40 (mm), got {list(self.radius)}.")
        # the largest voxel side after resampling the 2 mm template
        voxel = max(2.0 * (b - a) / m for (a, b), m in zip(MNI_BOX, self.size))
        need(
            r0 >= 1.5 * voxel,
            f"radius min {r0} mm is under 1.5 voxels ({voxel:.2f} mm at size {'x'.join(map(str, self.size))}); "
            "lesion shapes would be invisible.",
        )
        v0, v1 = self.intensity
        need(0 <= v0 <= v1 <= 1, f"intensity must satisfy 0 <= min <= max <= 1, got {list(self.intensity)}.")
        need(0 < self.edge <= 1, f"edge must be in (0, 1] (a share of the radius), got {self.edge}.")
        need(0 <= self.irregularity < 1, f"irregularity must be in [0, 1), got {self.irregularity}.")
        need(0 <= self.jitter < 1, f"jitter must be in [0, 1), got {self.jitter}.")
        need(self.noise >= 0, f"noise must not be negative, got {self.noise}.")
        need(0 <= self.bias <= 1, f"bias must be in [0, 1], got {self.bias}.")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("size", "lesions", "radius", "intensity"):
            d[key] = list(getattr(self, key))
        return d
