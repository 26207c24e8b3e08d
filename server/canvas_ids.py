"""Canvas ids appear in URLs, logs and storage keys: keep them short and plain."""

from __future__ import annotations

import re

CANVAS_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CANVAS_ID_RULE = "1-64 characters from A-Z, a-z, 0-9, '_' and '-'"


def is_valid_canvas_id(canvas_id: str) -> bool:
    return CANVAS_ID_PATTERN.fullmatch(canvas_id) is not None
