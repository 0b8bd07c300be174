"""Reading the JSON files a user may have touched (config.json, summary.json, sweep.json).

A file that is not valid JSON fails with one line naming it and where it breaks, instead of
json's "Expecting value: line 1 column 1 (char 0)", which names no file:

    config = read_json(workdir / "config.json")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from normlab.errors import NormlabError


def read_json(path: str | Path) -> Any:
    """The JSON value in `path`; NormlabError naming the file if it is not valid JSON (an
    OSError, e.g. FileNotFoundError, goes through as it is: it names the file already)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NormlabError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "restore or delete it"
        ) from None
    except UnicodeDecodeError:
        raise NormlabError(f"{path} is not a text (JSON) file; restore or delete it") from None
