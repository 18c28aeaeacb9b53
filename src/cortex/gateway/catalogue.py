"""Model names clients send, resolved to the models the fleet can serve."""

from __future__ import annotations

from fnmatch import fnmatchcase

from cortex.spec import ModelSpec


class Catalogue:
    """The profiles of ``models.toml`` plus whatever the neurons report loaded."""

    def __init__(self, profiles: list[ModelSpec]) -> None:
        self.profiles: dict[str, ModelSpec] = {p.id: p for p in profiles}

    def resolve(self, name: str, loaded: set[str]) -> str | None:
        """The model id ``name`` means: an exact id first, then the first alias glob."""
        if name in self.profiles or name in loaded:
            return name
        for profile in self.profiles.values():
            if any(fnmatchcase(name, pattern) for pattern in profile.aliases):
                return profile.id
        return None

    def ids(self, loaded: set[str]) -> list[str]:
        return list(self.profiles) + sorted(loaded - set(self.profiles))
