import pytest

from fba.utils.jsonl import parse_object


class RecordError(ValueError):
    pass


def test_parse_object_returns_the_record():
    assert parse_object('{"a": 1, "b": [2]}', "f.jsonl, line 3", ("a", "b")) == {"a": 1, "b": [2]}


@pytest.mark.parametrize("line, message", [
    ('{"a": 1', r"^f.jsonl, line 3: not valid JSON \("),
    ("[1, 2]", r"^f.jsonl, line 3: expected a JSON object with keys a, b$"),
    ('{"b": 1}', r"^f.jsonl, line 3: missing key 'a'$"),
    ('{"c": 1}', r"^f.jsonl, line 3: missing keys 'a', 'b'$"),
])
def test_parse_object_names_the_place_and_the_fault(line, message):
    with pytest.raises(RecordError, match=message):
        parse_object(line, "f.jsonl, line 3", ("a", "b"), RecordError)
