"""One registry mechanism for methods, models and datasets.

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``, but a duplicate name raises
(timm only warns) and an unknown name fails with the known names and the closest matches.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; ``str()`` is a one-line message listing the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence
        return str(self.args[0])


class Registry(Generic[T]):
    """A named table of objects filled by a decorator.

    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def tiny(): ...
    >>> models.list("t*")
    ['tiny']
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def add(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return add

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))})"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching a shell-style pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def select(self, spec: str, default_all: Callable[[str], bool] | None = None) -> list[str]:
        """Resolve a user selection: ``all``, a comma list, shell patterns, or a mix of them.

        Every plain name must exist and every pattern must match something; the order is the user's,
        without repeats. ``default_all`` filters what ``all`` means (e.g. only data-free methods).
        """
        chosen: list[str] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if part == "all":
                names = [n for n in self.list() if default_all is None or default_all(n)]
            elif any(c in part for c in "*?["):
                names = self.list(part)
                if not names:
                    raise UnknownNameError(
                        f"no {self.kind} matches {part!r} (known: {', '.join(sorted(self._entries))})"
                    )
            else:
                self.get(part)
                names = [part]
            chosen += [n for n in names if n not in chosen]
        if not chosen:
            raise UnknownNameError(f"empty {self.kind} selection {spec!r}")
        return chosen

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


METHODS: Registry = Registry("method")
MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")


def load_plugins() -> None:
    """Fill the registries: the models and datasets of the harness and every method module under ``methods/``
    (imported in one place, ``methods/__init__``). Safe to call again."""
    import methods  # noqa: F401

    from . import data, models  # noqa: F401
