"""One JSON Lines record, parsed with an error that says where it came from and what is wrong.

Captions, the synthetic set's attributes and the metrics log are all JSON Lines that people edit or cut
short; a bad line must name its file and line, never surface as a bare ``JSONDecodeError`` or ``KeyError``.
"""
from __future__ import annotations

import json
from typing import Any, Sequence


def parse_object(line: str, where: str, keys: Sequence[str] = (),
                 error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object on ``line``, which must hold every one of ``keys``; else ``error`` prefixed by ``where``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise error(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected a JSON object" + (f" with keys {', '.join(keys)}" if keys else ""))
    missing = [key for key in keys if key not in record]
    if missing:
        raise error(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    return record
