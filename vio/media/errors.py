"""The media layer's one error type."""

from __future__ import annotations

__all__ = ["MediaError"]


class MediaError(ValueError):
    """A media request that cannot be carried out.

    The message is a sentence for the person whose request it was (it starts in lower case so
    that it can follow a prefix, e.g. ``"The answer was not accepted: " + str(error)``).
    """
