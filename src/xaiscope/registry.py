"""A name -> class registry, shared by the explanation methods and the metrics."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from xaiscope.errors import XaiscopeError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes registered under their ``name`` attribute, in registration order.

    ``kind`` ("method", "metric") and ``list_command`` word the error for an unknown
    name, raised as ``error``; ``check`` validates a class when it is registered.
    """

    def __init__(
        self, kind: str, error: type[XaiscopeError], list_command: str, check: Callable[[type], None] | None = None
    ) -> None:
        self.kind, self.error, self.list_command, self.check = kind, error, list_command, check
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator adding ``cls`` under ``cls.name``."""
        name = cls.name  # type: ignore[attr-defined]
        if name in self._classes:
            raise RuntimeError(f"duplicate {self.kind} name {name}")
        if self.check is not None:
            self.check(cls)
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._classes)

    def get_class(self, name: str) -> type[T]:
        if name not in self._classes:
            raise self.error(
                f"Unknown {self.kind} {name!r}{did_you_mean(name, self._classes)}; run '{self.list_command}' to list them."
            )
        return self._classes[name]

    def get(self, name: str, **settings: Any) -> T:
        """An instance of the class ``name`` with ``settings`` (validated by the class)."""
        return self.get_class(name)(**settings)
