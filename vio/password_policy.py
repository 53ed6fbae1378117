"""What a staff password must be: the one rule for the sign-in pages and the ``vio staff``
commands, a pure function of the password and the account it is for.

A password is refused when it is

- shorter than ``MIN_PASSWORD_LENGTH`` or longer than ``MAX_PASSWORD_LENGTH`` (argon2 is not
  fed megabytes), begins or ends with a space (the sign-in form trims those), or holds a
  character nobody can type;
- one of the most common passwords (``vio/data/common-passwords.txt``), compared ignoring
  case: the password itself, or one common word with easy letter swaps (``p@ssw0rd``) and easy
  digits or symbols before or after it (``Password1234!``, ``qwertyuiop12``, ``summer2024!!``);
- a run of keys or a repeated pattern (``123456789012``, ``abcabcabcabc``, ``1q2w3e4r5t6y``);
- holds the account's name or the part of its email address before the ``@``.

The common-passwords file is derived from the 20,000 most common passwords that Django ships
(``django/contrib/auth/common-passwords.txt.gz``, by Royce Williams, BSD licence): entries in
plain ASCII, lower-cased, keeping those of at least ``MIN_PASSWORD_LENGTH`` characters as they
are, and of every entry its one word (``_word``) where that has at least ``MIN_WORD_LENGTH``
letters. Lines starting with ``#`` are notes.
"""

from __future__ import annotations

import enum
import re
import secrets
from functools import cache
from importlib import resources

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128
MIN_WORD_LENGTH = 4  # shorter words are easy to guess whether listed or not
REPEAT_BLOCK_MAX = 4  # "abcabcabcabc": any block this short, repeated, is easy to guess
EASY_PIECE_LENGTH = 2  # "!!", "12", "x": this short, any digits or symbols add little
EASY_PIECES_MAX = 2  # "2024!!": at most this many easy pieces around a common word
YEARS = range(1900, 2100)
MIN_PERSONAL_LENGTH = 3  # a name or email part shorter than this is not looked for
MIN_PERSONAL_PIECE_LENGTH = 4  # nor is a piece of one ("casey" of "casey.doe") shorter

COMMON_PASSWORDS = "common-passwords.txt"
TEMPORARY_PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
TEMPORARY_PASSWORD_GROUPS = 4
TEMPORARY_PASSWORD_GROUP_LENGTH = 4

# Keys in a row, the alphabet and the digits, both ways: a password inside one is a run.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm", "qwertyuiopasdfghjklzxcvbnm",
         "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p", "qazwsxedcrfvtgbyhnujmikolp",
         "1q2w3e4r5t6y7u8i9o0p", "q1w2e3r4t5y6u7i8o9p0", "!@#$%^&*()_+",
         "abcdefghijklmnopqrstuvwxyz", "0123456789")
RUNS = tuple(run * 3 for row in _ROWS for run in (row, row[::-1]))
# Letters people swap for digits and symbols inside a word.
SWAPS = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                       "$": "s", "!": "i"})
_PIECES = re.compile(r"[0-9]+|[^0-9]+")


class PasswordRefusal(enum.StrEnum):
    TOO_SHORT = "too-short"
    TOO_LONG = "too-long"
    SPACE_AT_END = "space-at-end"
    UNTYPEABLE = "untypeable"
    COMMON = "common"
    PATTERN = "pattern"
    PERSONAL = "personal"


REFUSAL_TEXT: dict[PasswordRefusal, str] = {
    PasswordRefusal.TOO_SHORT:
        f"The password needs at least {MIN_PASSWORD_LENGTH} characters; a few words "
        "together make a good one.",
    PasswordRefusal.TOO_LONG:
        f"The password can have at most {MAX_PASSWORD_LENGTH} characters.",
    PasswordRefusal.SPACE_AT_END:
        "The password can't begin or end with a space.",
    PasswordRefusal.UNTYPEABLE:
        "The password holds a character that can't be typed at the sign-in page.",
    PasswordRefusal.COMMON:
        "That is one of the most common passwords, or one with a few digits or symbols "
        "added; please choose one that is harder to guess.",
    PasswordRefusal.PATTERN:
        "That password is a run of keys or a repeated pattern; please choose one that is "
        "harder to guess.",
    PasswordRefusal.PERSONAL:
        "The password can't contain the account's name or email address.",
}


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list, lower-cased (read once)."""
    text = (resources.files("vio") / "data" / COMMON_PASSWORDS).read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))


def _is_run(text: str) -> bool:
    return len(text) >= 3 and any(text in run for run in RUNS)


def _period(text: str) -> int | None:
    """The shortest block that ``text`` repeats at least twice, if it is one."""
    for size in range(1, len(text) // 2 + 1):
        if all(text[i] == text[i % size] for i in range(len(text))):
            return size
    return None


def _is_pattern(text: str, common: frozenset[str]) -> bool:
    """A run of keys, a year, or a short or easy block repeated."""
    if _is_run(text) or (len(text) == 4 and text.isdigit() and int(text) in YEARS):
        return True
    size = _period(text)
    if size is None:
        return False
    block = text[:size]
    return size <= REPEAT_BLOCK_MAX or block in common or _is_pattern(block, common)


def _easy_filler(text: str, common: frozenset[str]) -> bool:
    """Digits and symbols that add little: nothing, or a few short or patterned pieces."""
    pieces = _PIECES.findall(text)
    return len(pieces) <= EASY_PIECES_MAX and all(
        len(piece) <= EASY_PIECE_LENGTH or _is_pattern(piece, common) for piece in pieces)


def _word(password: str) -> tuple[str, str, str] | None:
    """``(before, word, after)``: the letters from the first to the last, swaps undone, when
    that is one word with only digits and symbols around it."""
    letters = [i for i, c in enumerate(password) if c.isalpha()]
    if not letters:
        return None
    first, last = letters[0], letters[-1] + 1
    word = password[first:last].translate(SWAPS)
    if not word.isalpha():
        return None
    return password[:first], word, password[last:]


def _decorated_word(password: str, common: frozenset[str]) -> PasswordRefusal | None:
    """One easy word with only a few easy digits or symbols around it."""
    found = _word(password)
    if found is None:
        return None
    before, word, after = found
    if not (_easy_filler(before, common) and _easy_filler(after, common)):
        return None
    if word in common:
        return PasswordRefusal.COMMON
    if len(word) < MIN_WORD_LENGTH or _is_pattern(word, common):
        return PasswordRefusal.PATTERN
    return None


def _personal_words(name: str, email: str) -> set[str]:
    local = email.strip().casefold().partition("@")[0]
    whole_name = name.casefold()
    words = {local, "".join(whole_name.split())}
    words = {w for w in words if len(w) >= MIN_PERSONAL_LENGTH}
    pieces = re.split(r"[^\w]+|_", f"{local} {whole_name}")
    return words | {p for p in pieces if len(p) >= MIN_PERSONAL_PIECE_LENGTH}


def password_refusal(password: str, *, name: str = "", email: str = "",
                     common: frozenset[str] | None = None) -> PasswordRefusal | None:
    """Why this password can't be the account's, or None if it can. ``name`` and ``email``
    are the account's; ``common`` the list to compare with (the shipped one by default)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return PasswordRefusal.TOO_SHORT
    if len(password) > MAX_PASSWORD_LENGTH:
        return PasswordRefusal.TOO_LONG
    if password != password.strip():
        return PasswordRefusal.SPACE_AT_END
    if not password.isprintable():
        return PasswordRefusal.UNTYPEABLE
    listed = common_passwords() if common is None else common
    folded = password.casefold()
    if folded in listed:
        return PasswordRefusal.COMMON
    decorated = _decorated_word(folded, listed)
    if decorated is not None:
        return decorated
    if _is_pattern(folded, listed) or (not any(c.isalpha() for c in folded)
                                       and _easy_filler(folded, listed)):
        return PasswordRefusal.PATTERN
    seen = {folded, "".join(folded.split()), folded.translate(SWAPS)}
    if any(word in form for word in _personal_words(name, email) for form in seen):
        return PasswordRefusal.PERSONAL
    return None


def temporary_password(*, name: str = "", email: str = "") -> str:
    """A random password an admin hands over once (``abcd-efgh-jkmn-pqrs``, about 79 bits);
    its holder chooses their own at the next sign-in."""
    while True:
        candidate = "-".join(
            "".join(secrets.choice(TEMPORARY_PASSWORD_ALPHABET)
                    for _ in range(TEMPORARY_PASSWORD_GROUP_LENGTH))
            for _ in range(TEMPORARY_PASSWORD_GROUPS))
        if password_refusal(candidate, name=name, email=email) is None:
            return candidate
