"""Name -> class registries filled by class decorators (passes, light blocks)."""

from __future__ import annotations


def registrar(registry: dict[str, type], what: str, attr: str):
    """A ``@decorator(name)`` factory: store the class under ``name`` in ``registry`` and set
    ``cls.<attr> = name``; the same name for another class is a ValueError naming ``what``."""

    def register(name: str):
        def deco(cls):
            if name in registry and registry[name] is not cls:
                raise ValueError(f"{what} '{name}' registered twice")
            setattr(cls, attr, name)
            registry[name] = cls
            return cls

        return deco

    return register
