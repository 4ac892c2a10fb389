"""Interface language: gettext catalogues (``babel``) for English, German and Ukrainian.

What it is for
    The templates call ``_("...")``; the text is English in the source and translated from
    ``broker/console/locale/<lang>/LC_MESSAGES/console.po``, compiled in memory at start (no
    build step, no ``.mo`` file to forget). English is complete by construction; German and
    Ukrainian cover navigation, markings, buttons and errors (a missing entry shows English).
    Times are shown in the person's time zone (:func:`local_time`).

What it must never do
    Translate message content: only the console's own words go through here.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from functools import cache
from gettext import NullTranslations
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR: Final = Path(__file__).resolve().parent / "locale"
LANGUAGE_NAMES: Final = {"en": "English", "de": "Deutsch", "uk": "Українська"}


@cache
def translations(language: str) -> NullTranslations:
    """The catalogue of ``language`` (English: none, the source text is English)."""
    path = LOCALE_DIR / language / "LC_MESSAGES" / "console.po"
    if language == "en" or not path.is_file():
        return NullTranslations()
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer)


def local_time(value: str | None, zone: str, *, with_time: bool = True) -> str:
    """An RFC 3339 UTC time as the person reads it: ``2026-12-02 17:04 CET``."""
    if not value:
        return ""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        here = when.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        here = when.astimezone(UTC)
    return here.strftime("%Y-%m-%d %H:%M %Z" if with_time else "%Y-%m-%d")
