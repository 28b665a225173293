"""Each replica's engine features of the voices it used lately: a bounded least-recently-used map
from (voice id, engine name) to the engine's ``VoiceProfile``.

Per replica and never authoritative: the database says which voices exist, so the library checks the
voice's row before every use and drops the voice from here when the row is gone (deleted through any
replica). Not thread-safe by design: only the event loop thread touches it.
"""

from __future__ import annotations

from collections import OrderedDict

from vcstream.engines.base import VoiceProfile

#: (voice id, engine name)
ProfileKey = tuple[str, str]


class ProfileCache:
    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"a profile cache holds at least one entry, not {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[ProfileKey, VoiceProfile] = OrderedDict()

    def get(self, key: ProfileKey) -> VoiceProfile | None:
        """The cached profile, now the most recently used; None when absent."""
        profile = self._entries.get(key)
        if profile is not None:
            self._entries.move_to_end(key)
        return profile

    def put(self, key: ProfileKey, profile: VoiceProfile) -> None:
        """Store as the most recently used, dropping the least recently used beyond the bound."""
        self._entries[key] = profile
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget_voice(self, voice_id: str) -> None:
        """Drop the voice's profiles for every engine."""
        for key in [k for k in self._entries if k[0] == voice_id]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def ordered_keys(self) -> list[ProfileKey]:
        """The cached keys, least recently used first."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
