"""Reading the files users hand to the tools, with one-line errors naming the file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from neo_sim.errors import NeoError


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; NeoError naming the file for anything else (`what` says
    what the file should be, e.g. "a profile")."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NeoError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise NeoError(f"{path}: not a text file ({what} is JSON)") from None
    except OSError as exc:
        raise NeoError(f"{path}: cannot be read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise NeoError(f"{path}: expected a JSON object ({what})")
    return data


def ensure_writable_dir(path: Path, what: str) -> Path:
    """`path` as a directory this process can write `what` in (made if missing), or NeoError
    naming it. The tools check before they work, not when they write at the end: a profile
    takes minutes to hours to measure, a sweep or a validation minutes."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise NeoError(f"{path}: cannot write {what} there ({reason})") from None
    return path
