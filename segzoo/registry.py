"""Registries of components (models, backbones, datasets) and the options each one declares.

A component registers itself where it is defined, with the options it owns:

    MODELS = Registry("model", "segzoo.models")

    @MODELS.register("pspnet", options=[Option("bins", int_list, (1, 2, 3, 6), "pyramid bins")])
    def build_pspnet(features, num_classes, *, dropout, bins): ...

Nothing else has to change when a component is added: ``Registry.load_all`` imports every
module of the registry's package (so their ``register`` calls run), the command line gets one
flag per declared option (``segzoo.engine.config``), and builders receive only the options they
declared (``Registry.options_for``). Options of the same name declared by several components
(``ops_impl`` by PSANet and CCNet) must agree on type and default; they become one flag.

This module is plain bookkeeping: it imports no component and knows no command-line syntax.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from segzoo.runtime.errors import OptionError


@dataclass(frozen=True)
class Option:
    """One setting a component owns: settable from YAML and the command line as ``--name``.

    Args:
        name: the key (also the flag name without dashes).
        type: converts a command-line word or YAML value (e.g. ``int``, ``str2bool``).
        default: value when nobody sets it.
        help: one line for ``--help``.
        choices: allowed values, or None.
    """

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: tuple | None = None


@dataclass
class Entry:
    """A registered component: its name, the object (builder or class), its options."""

    name: str
    obj: Any
    options: tuple[Option, ...] = ()
    summary: str = ""
    extra: dict = field(default_factory=dict)


class Registry:
    """A {name: Entry} table whose entries register themselves.

    Args:
        kind: what the entries are, for messages ("model", "backbone", "dataset").
        package: the package whose modules hold the entries; imported on first look-up.
        key: the setting that names an entry ("model_name"), for errors; default ``kind``.
    """

    def __init__(self, kind: str, package: str, key: str | None = None):
        self.kind = kind
        self.package = package
        self.key = key or kind
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, *, options: Iterable[Option] = (), summary: str = "", **extra):
        """Decorator: register ``obj`` under ``name`` with its options; returns ``obj`` unchanged."""

        def decorate(obj):
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (obj.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, tuple(options), summary or (doc[0] if doc else ""), extra)
            return obj

        return decorate

    def load_all(self) -> None:
        """Import every module of the package once, so every component has registered."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.walk_packages(package.__path__, prefix=self.package + "."):
            if not module.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(module.name)

    def names(self) -> list[str]:
        self.load_all()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self.load_all()
        return name in self._entries

    def get(self, name: str) -> Entry:
        """The entry of ``name``; an OptionError listing the known names otherwise."""
        self.load_all()
        if name not in self._entries:
            raise OptionError(self.key, name, f"is not a known {self.kind}; use one of {', '.join(self.names())}")
        return self._entries[name]

    def entries(self) -> list[Entry]:
        self.load_all()
        return [self._entries[n] for n in sorted(self._entries)]

    def all_options(self) -> list[tuple[Option, list[str]]]:
        """Every declared option once, with the names of the components that declare it."""
        merged: dict[str, tuple[Option, list[str]]] = {}
        for entry in self.entries():
            for option in entry.options:
                if option.name in merged:
                    first, owners = merged[option.name]
                    if (first.type, first.default, first.choices) != (option.type, option.default, option.choices):
                        raise ValueError(f"option {option.name!r} of {self.kind} {entry.name!r} disagrees with "
                                         f"the one of {owners[0]!r}")
                    owners.append(entry.name)
                else:
                    merged[option.name] = (option, [entry.name])
        return list(merged.values())

    def options_for(self, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """The options ``name`` declares, taken from ``values`` (a config mapping) or defaulted."""
        entry = self.get(name)
        return {o.name: values.get(o.name, o.default) if values.get(o.name) is not None else o.default
                for o in entry.options}
