"""A name -> class registry, shared by the explanation methods and the metrics."""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterable, TypeVar

from xaiscope.errors import XaiscopeError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes registered under their ``name`` attribute, in registration order.

    ``kind`` ("method", "metric") and ``list_command`` word the error for an unknown
    name, raised as ``error``; ``check`` validates a class when it is registered. The
    class attribute ``group_attr`` ("family", "category") sorts classes into groups: a
    group's value, and ``all``, name every member in lists of names (:meth:`expand`).
    Where a group shares its name with a member (the metric ``complexity`` of the category
    ``complexity``), the bare name is the member and ``category:complexity`` the group;
    the prefixed form works for every group.
    """

    ALL = "all"

    def __init__(
        self,
        kind: str,
        error: type[XaiscopeError],
        list_command: str,
        check: Callable[[type], None] | None = None,
        group_attr: str = "family",
    ) -> None:
        self.kind, self.error, self.list_command, self.check = kind, error, list_command, check
        self.group_attr = group_attr
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator adding ``cls`` under ``cls.name``."""
        name = cls.name  # type: ignore[attr-defined]
        if name in self._classes:
            raise RuntimeError(f"duplicate {self.kind} name {name}")
        if self.ALL in (name, getattr(cls, self.group_attr)):
            raise RuntimeError(f"{self.kind} {name}: '{self.ALL}' is reserved for every {self.kind}")
        if self.check is not None:
            self.check(cls)
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._classes)

    def groups(self) -> dict[str, list[str]]:
        """Group name -> member names, both in registration order (``all`` not included)."""
        out: dict[str, list[str]] = {}
        for name, cls in self._classes.items():
            out.setdefault(getattr(cls, self.group_attr), []).append(name)
        return out

    def expand(self, items: Iterable[str]) -> list[str]:
        """``items`` with ``all`` and group names replaced by their members, each name once,
        in the order given (a group's members in registration order). Every name is checked.

        >>> methods.expand(["saliency", "cams"])   # ['saliency', 'cam', 'gradcam', ...]
        """
        groups = self.groups()
        out: list[str] = []
        for item in items:
            prefix, _, group = item.partition(":")
            if item == self.ALL:
                members = self.names()
            elif prefix == self.group_attr and group in groups:
                members = groups[group]
            elif item in groups and item not in self._classes:
                members = groups[item]
            else:
                members = [self.get_class(item).name]  # type: ignore[attr-defined]
            out += [m for m in members if m not in out]
        return out

    def by_group(self, items: Iterable[str]) -> set[str]:
        """The names that ``items`` reach only through ``all`` or a group, not by their own name."""
        items = list(items)
        return set(self.expand(items)) - set(items)

    def get_class(self, name: str) -> type[T]:
        if name not in self._classes:
            known = [*self._classes, self.ALL, *self.groups(), *(f"{self.group_attr}:{g}" for g in self.groups())]
            raise self.error(
                f"Unknown {self.kind} {name!r}{did_you_mean(name, known)}; run '{self.list_command}' to list them."
            )
        return self._classes[name]

    def get(self, name: str, **settings: Any) -> T:
        """An instance of the class ``name`` with ``settings`` (validated by the class)."""
        return self.get_class(name)(**settings)
