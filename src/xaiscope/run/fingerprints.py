"""What a stored result was computed from, and what has changed since.

A work unit's *record* names its inputs::

    model          weights hash of the model (BLAKE2b-128 of its state dict as loaded)
    settings       hash of the method's and the metrics' resolved settings and the target mode
    normalisation  per-channel mean and SD applied to the images (None when not normalised)
    images         per image [id, label, pixel hash, mask hash]: pixels as decoded, before
                   normalisation (the readers hash them while reading); the mask hash
                   covers the extra masks the run's metrics read (``confounder``)
    data           hash of ``images``
    fingerprint    hash of model, settings, normalisation and data

A stored unit is *fresh* when its fingerprint equals the one its inputs give now, and
*stale* otherwise; stale units are never reused. :func:`compare` finds them and says,
in one sentence, what changed: which model (with its old and new weights hash), how
many images, masks or labels (with one example id), the normalisation, or the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from xaiscope.data.hashing import hash_json, short


def unit_record(
    model_hash: str, settings_hash: str, normalisation: dict | None, images: list[list[Any]]
) -> dict[str, Any]:
    """The record of one unit's inputs (module docstring)."""
    rec: dict[str, Any] = {
        "model": model_hash,
        "settings": settings_hash,
        "normalisation": normalisation,
        "data": hash_json(images),
        "images": images,
    }
    rec["fingerprint"] = hash_json({k: rec[k] for k in ("model", "settings", "normalisation", "data")})
    return rec


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its per-image list (what the manifest keeps per unit)."""
    return {k: v for k, v in record.items() if k != "images"}


@dataclass
class Comparison:
    """Stored units against the current plan: ``stale`` planned units whose stored record
    differs, ``gone`` stored units no longer in the plan, ``reasons`` what changed as
    ``(subject, detail)`` pairs."""

    stale: list = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    reasons: list[tuple[str, str]] = field(default_factory=list)
    unrecorded: int = 0

    def __bool__(self) -> bool:
        return bool(self.stale or self.gone)


def _fmt_values(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def plural(n: int, word: str) -> str:
    """``"1 image"``, ``"3 images"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def compare(
    stored: dict[str, dict[str, Any] | None],
    planned: dict[str, Any],
    current: dict[str, dict[str, Any]],
    model_of: dict[str, str],
    model_names: dict[str, str],
) -> Comparison:
    """Compare stored records (``unit id -> record or None``) with the current plan.

    ``planned``: unit id -> unit; ``current``: unit id -> its record now; ``model_of``:
    unit id -> model name (planned units); ``model_names``: model name -> how to name it in
    a message (e.g. ``cnn (runs/model.pt)``).
    """
    out = Comparison()
    out.gone = sorted(uid for uid in stored if uid not in planned)
    stale_ids = [
        uid
        for uid, rec in sorted(stored.items())
        if uid in planned and (rec is None or rec.get("fingerprint") != current[uid]["fingerprint"])
    ]
    out.stale = [planned[uid] for uid in stale_ids]
    if not out:
        return out
    # models
    for name, label in model_names.items():
        now = next((current[u]["model"] for u in planned if model_of[u] == name), None)
        old = sorted(
            {stored[u]["model"] for u in stale_ids if model_of[u] == name and stored[u] and stored[u]["model"] != now}
        )
        if old:
            out.reasons.append((f"model {label}", f"weights hash {short(old[0])} -> {short(now)}"))
    # images, masks and labels
    old_images: dict[str, list[Any]] = {}
    for rec in stored.values():
        for entry in (rec or {}).get("images", []):
            old_images.setdefault(entry[0], entry)
    now_images: dict[str, list[Any]] = {}
    for uid in planned:
        for entry in current[uid]["images"]:
            now_images.setdefault(entry[0], entry)
    for index, word in ((2, "image"), (3, "mask"), (1, "label")):
        changed = [i for i, e in now_images.items() if i in old_images and old_images[i][index] != e[index]]
        if changed:
            out.reasons.append((plural(len(changed), word), f"e.g. {changed[0]}"))
    stale_now_ids = {e[0] for uid in stale_ids for e in current[uid]["images"]}
    added = [i for i in now_images if i not in old_images and i in stale_now_ids]
    removed = [i for i in old_images if i not in now_images]
    if added or removed:
        parts = ([f"{len(added)} added"] if added else []) + ([f"{len(removed)} removed"] if removed else [])
        out.reasons.append(("the list of images", f"{', '.join(parts)}, e.g. {(added or removed)[0]}"))
    # normalisation and settings
    norms = [stored[u]["normalisation"] for u in stale_ids if stored[u]]
    now_norm = current[stale_ids[0]]["normalisation"] if stale_ids else None
    old_norm = next((n for n in norms if n != now_norm), "same")
    if old_norm != "same":
        if old_norm and now_norm:
            detail = f"mean {_fmt_values(old_norm['mean'])} -> {_fmt_values(now_norm['mean'])}"
        else:
            detail = "now applied" if now_norm else "no longer applied"
        out.reasons.append(("the normalisation", detail))
    settings_changed = [u for u in stale_ids if stored[u] and stored[u]["settings"] != current[u]["settings"]]
    if settings_changed:
        out.reasons.append(("the resolved method and metric settings", f"of {plural(len(settings_changed), 'unit')}"))
    out.unrecorded = sum(stored[u] is None for u in stale_ids)
    if not out.reasons and out.gone:
        out.reasons.append(("the plan of work units", f"{plural(len(out.gone), 'stored unit')} no longer in it"))
    if not out.reasons and len(out.stale) > out.unrecorded:
        out.reasons.append((plural(len(out.stale) - out.unrecorded, "unit"), "their inputs' fingerprints"))
    return out


def changed_since(reasons: list[tuple[str, str]], place: str) -> str:
    """``"<subject> changed since <place> was written (<detail>)"`` for one reason,
    ``"<s1> (<d1>) and <s2> (<d2>) changed since <place> was written"`` for several (a
    subject that ends in parentheses takes its detail inside them)."""
    if len(reasons) == 1:
        subject, detail = reasons[0]
        return f"{subject} changed since {place} was written ({detail})"
    items = [f"{s[:-1]}, {d})" if s.endswith(")") else f"{s} ({d})" for s, d in reasons]
    joined = ", ".join(items[:-1]) + " and " + items[-1]
    return f"{joined} changed since {place} was written"


def stale_sentence(
    reasons: list[tuple[str, str]],
    place: str,
    n_stale: int,
    *,
    n_gone: int = 0,
    unrecorded: int = 0,
    thing: str = "unit",
    redo: str = "recompute",
) -> str:
    """The one sentence a user sees when stored results no longer match their inputs:
    what changed (:func:`changed_since`), how many stored ``thing`` s carry no record of
    their inputs, and how to proceed (``--refresh`` or ``--force``)."""
    parts = [changed_since(reasons, place)] if reasons else []
    if unrecorded:
        one = unrecorded == 1
        parts.append(
            f"{plural(unrecorded, thing)} in {place} {'was' if one else 'were'} stored without a record of "
            f"{'its' if one else 'their'} inputs"
        )
    gone = f" (and drop the {n_gone} that no longer belong to the run)" if n_gone else ""
    return (
        f"{', and '.join(parts)}; use --refresh to {redo} the {plural(n_stale, 'stale ' + thing)}{gone} "
        f"or --force to {redo} everything."
    )
