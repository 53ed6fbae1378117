"""The protocol's parser (pure) and its document."""

import json
import re
from pathlib import Path

import pytest

from vio.errors import CLOSE_CODES, BadMessage
from vio.protocol import CLIENT_MESSAGES, SERVER_MESSAGES, parse

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
LIMIT = 1024


@pytest.mark.parametrize(("raw", "code"), [
    ("{", "bad-message"),
    ("null", "bad-message"),
    ('"join"', "bad-message"),
    ("{}", "bad-message"),
    ('{"type": 3}', "bad-message"),
    ('{"type": "fly"}', "unknown-type"),
    ('{"type": "join"}', "bad-message"),
    ('{"type": "join", "v": "1"}', "bad-message"),
    ('{"type": "join", "v": true}', "bad-message"),
    ('{"type": "join", "v": 2}', "unsupported-version"),
    ('{"type": "join", "v": 1, "name": "   "}', "bad-message"),
    ('{"type": "answer", "sdp": ""}', "bad-message"),
    ('{"type": "media", "audio": 1, "video": true}', "bad-message"),
    ('{"type": "chat", "text": "hi", "to": "everyone"}', "bad-message"),
    ('{"type": "chat", "text": "  ", "to": "room"}', "bad-message"),
    ('{"type": "remove", "participant_id": "p-1", "reason": ""}', "bad-message"),
    ('{"type": "extend", "minutes": 0}', "bad-message"),
    ('{"type": "extend", "minutes": 5.5}', "bad-message"),
    ("[" * 5000 + "]" * 5000, "message-too-large"),
    (b'{"type": "ping"}', "bad-message"),
])
def test_bad_messages_are_refused_with_a_code(raw, code):
    with pytest.raises(BadMessage) as refused:
        parse(raw, LIMIT)
    assert refused.value.code == code
    assert refused.value.message


def test_deep_nesting_under_the_limit_is_refused_not_crashing():
    with pytest.raises(BadMessage):
        parse("[" * 500 + "]" * 500, LIMIT)


def test_good_messages_parse_and_unknown_fields_are_ignored():
    msg = parse('{"type": "join", "v": 1, "name": "  Angela   L. ", "extra": 1}', LIMIT)
    assert msg.type == "join" and msg["name"] == "Angela L."
    assert parse('{"type": "media", "audio": false, "video": true}', LIMIT)["audio"] is False
    assert parse(json.dumps({"type": "extend", "minutes": 10}), LIMIT)["minutes"] == 10


def test_every_message_type_is_documented():
    for kind in [*CLIENT_MESSAGES, *SERVER_MESSAGES]:
        assert f"`{kind}`" in DOC, f"message type {kind!r} is missing from docs/protocol.md"


def test_every_close_code_is_documented():
    for code, number in CLOSE_CODES.items():
        documented = re.search(rf"\| `?{re.escape(code)}`? \|.*\b{number}\b", DOC) or \
            re.search(rf"\| {number} \| `{re.escape(code)}` \|", DOC)
        assert documented, f"{code} ({number}) is not in the close-code tables"


def test_every_error_code_in_the_code_is_documented():
    source = "\n".join(p.read_text() for p in (Path(__file__).parent.parent / "vio").rglob("*.py"))
    codes = set(re.findall(r'(?:BadMessage|NotAllowed|Refusal)\(\s*"([a-z-]+)"', source))
    assert len(codes) > 10
    for code in codes:
        assert f"`{code}`" in DOC, f"error code {code!r} is missing from docs/protocol.md"
