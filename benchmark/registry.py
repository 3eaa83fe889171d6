"""The registries of methods, metrics, datasets and models.

Each registry is filled by a decorator on a class or factory function, like timm's
``@register_model``::

    from xaibench.methods import register_method

    @register_method("my_method")
    class MyMethod(AttributionMethod): ...

Built-in entries are registered when the package that holds them is imported
(``xaibench.methods``, ``xaibench.metrics``, ...); that import happens on the first
lookup, not at ``import xaibench``. Third-party packages plug in through entry points
(group ``xaibench.methods`` etc.: ``name = package.module`` or ``package.module:object``;
loading the module runs its decorators) or through ``--plugin some.module`` on the CLI.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from .errors import UserError, unknown_name


class Registry:
    def __init__(self, kind: str, builtins: str, entry_point_group: str, base: Optional[str] = None) -> None:
        self.kind = kind
        self._builtins = builtins
        self._group = entry_point_group
        self._base = base  # "module:Class" every entry must subclass (checked when it registers)
        self._entries: Dict[str, Any] = {}
        self._loaded = False
        self._loading = False

    def register(self, name: Optional[str] = None, *, overwrite: bool = False) -> Callable[[Any], Any]:
        """Decorator: register a class or factory under ``name`` (default: its ``name``
        attribute, else its ``__name__`` in lower case)."""

        def decorator(obj: Any) -> Any:
            if self._base is not None:
                module, _, cls = self._base.partition(":")
                base = getattr(importlib.import_module(module), cls)
                if not (isinstance(obj, type) and issubclass(obj, base)):
                    raise TypeError(f"a {self.kind} must be a subclass of {cls}; {obj!r} is not")
            key = (name or getattr(obj, "name", None) or obj.__name__).lower()
            if not overwrite and key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._entries[key] = obj
            if isinstance(obj, type) and not getattr(obj, "name", None):
                obj.name = key
            return obj

        return decorator

    def _ensure_loaded(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            importlib.import_module(self._builtins)
            for ep in metadata.entry_points(group=self._group):
                try:
                    ep.load()
                except Exception as exc:  # a broken third-party package must not hide ours
                    raise UserError(
                        f"plugin entry point '{ep.name} = {ep.value}' "
                        f"(group {self._group}) failed to load: {exc}"
                    ) from exc
            self._loaded = True
        finally:
            self._loading = False

    def names(self, pattern: str = "*") -> List[str]:
        """Registered names matching a shell-style wildcard, sorted (``list_methods('*cam*')``)."""
        self._ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern.lower()))

    def get(self, name: str) -> Any:
        self._ensure_loaded()
        key = name.lower()
        if key not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[key]

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def resolve(self, spec: str | List[str] | None, default: str = "all") -> List[str]:
        """Turn a user's list (``"all"``, ``"a,b"``, wildcards, a list) into registered names.

        Unknown names raise a :class:`UserError` naming the valid choices."""
        if spec is None:
            spec = default
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        out: List[str] = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            if item.lower() == "all":
                matched = self.names()
            elif any(c in item for c in "*?["):
                matched = self.names(item)
                if not matched:
                    raise UserError(
                        f"no {self.kind} matches '{item}'. Valid {self.kind}s: {', '.join(self.names())}"
                    )
            else:
                self.get(item)
                matched = [item.lower()]
            out.extend(m for m in matched if m not in out)
        if not out:
            raise UserError(f"no {self.kind} selected. Valid {self.kind}s: {', '.join(self.names())}")
        return out


METHODS = Registry(
    "method", "xaibench.methods", "xaibench.methods", base="xaibench.methods.base:AttributionMethod"
)
METRICS = Registry("metric", "xaibench.metrics", "xaibench.metrics", base="xaibench.metrics.base:Metric")
DATASETS = Registry("dataset", "xaibench.datasets", "xaibench.datasets")
MODELS = Registry("model", "xaibench.models", "xaibench.models")


def load_plugin(module: str) -> None:
    """Import a user module so that its ``@register_*`` decorators run.

    ``module`` is a module name (looked up on ``sys.path`` and, failing that, in the current
    directory, as the README's example expects) or the path of a ``.py`` file."""
    try:
        if module.endswith(".py") or os.sep in module:
            path = Path(module).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"plugin file '{module}' does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = mod
            spec.loader.exec_module(mod)
            return
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())
            importlib.import_module(module)
    except UserError:
        raise
    except SystemExit as exc:
        raise UserError(
            f"plugin module '{module}' called sys.exit({exc.code!r}) while being imported"
        ) from exc
    except Exception as exc:
        raise UserError(f"plugin module '{module}' failed to import: {type(exc).__name__}: {exc}") from exc
