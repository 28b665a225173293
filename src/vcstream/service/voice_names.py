"""What a voice name and an uploaded file's name may be: text people see in lists, so it must show
what it says. Names are stored in NFC; two names are the same voice name when equal after NFC and
case folding ("Zoë" typed with a combining diaeresis, "ZOË" and "zoë" are one name).

Refused in a voice name: control characters, invisible formatting characters (zero-width space,
byte order mark, soft hyphen...) and bidi controls (an RTL override makes "evil.exe" show as
"exe.live"), surrogates, private-use, unassigned code points and noncharacters (U+FFFF), line and
paragraph separators, and names with nothing visible. Zero-width (non-)joiners stay: Persian, Indic
scripts and emoji sequences need them between visible characters. A file name is only shown, so it is
cleaned instead of refused: the same characters are dropped.
"""

from __future__ import annotations

import re
import unicodedata

from vcstream.errors import VcstreamError
from vcstream.service.db.models import MAX_NAME_CHARS

#: zero-width non-joiner and joiner: invisible, but part of how some scripts and emoji are written
_JOINERS = frozenset("\u200c\u200d")
#: Unicode's Bidi_Control characters (embeddings, overrides, isolates, marks)
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: general categories never accepted: control, format, surrogate, private use, unassigned, separators
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point or noncharacter",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
MAX_FILENAME_CHARS = 255


class InvalidVoiceNameError(VcstreamError, ValueError):
    """The voice name is missing, empty, too long, invisible, or holds characters that hide what it
    shows (controls, bidi overrides, noncharacters)."""


def _code_point(char: str) -> str:
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')})"


def _why_refused(char: str) -> str | None:
    """What is wrong with ``char`` in a name, or None when it may stand there."""
    if char in _BIDI_CONTROLS:
        return "a bidirectional text control"
    if char in _JOINERS:
        return None
    return _REFUSED_CATEGORIES.get(unicodedata.category(char))


def _visible(char: str) -> bool:
    return not char.isspace() and char not in _JOINERS and unicodedata.category(char)[0] != "M"


def normalise_name(name: str | None) -> str:
    """The name as stored: NFC, without surrounding white space. Raises InvalidVoiceNameError
    naming the first character that is not accepted."""
    clean = unicodedata.normalize("NFC", name or "").strip()
    if not clean:
        raise InvalidVoiceNameError("a voice name is required (form field 'name', not empty)")
    for char in clean:
        why = _why_refused(char)
        if why is not None:
            raise InvalidVoiceNameError(f"the voice name must not contain {_code_point(char)}: it is {why}")
    if not any(_visible(char) for char in clean):
        raise InvalidVoiceNameError("the voice name has no visible character")
    if len(clean) > MAX_NAME_CHARS:
        raise InvalidVoiceNameError(f"the voice name has {len(clean)} characters; at most {MAX_NAME_CHARS}")
    return clean


def name_key(name: str) -> str:
    """What two voice names are compared by: NFC, case folded, NFC again (folding can undo it)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def shown_filename(filename: str | None) -> str | None:
    """The base name a client sent (browsers may send paths), NFC, with every character a voice name
    may not hold dropped (NUL, bidi overrides...): it is only shown, never used as a path."""
    if not filename:
        return None
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", filename))[-1]
    kept = "".join(char for char in base if _why_refused(char) is None).strip()
    return kept[:MAX_FILENAME_CHARS] or None
