"""The built-in ``pattern`` generator: a deterministic SVG drawn from the prompt, slowly on purpose.

SHA-256 of the prompt seeds everything: the style (grid, rings or stripes),
the shapes and, unless ``params.palette`` names or lists the colours, the
palette. The same prompt and params give byte-identical SVG; different
prompts give different pictures. The work is split into ``steps`` steps with
``step_delay`` seconds of sleep before each, so it behaves like a slow
generator (progress, cancellation) without any external service.

Params (all optional; unknown keys such as ``x``/``y`` are ignored):

* ``width``, ``height`` — integers 16..2048, default 512.
* ``palette`` — a name from ``PALETTES`` or a list of 1..16 ``#rgb``/``#rrggbb`` colours.
* ``duration`` — total seconds 0..600 (overrides ``step_delay`` with ``duration / steps``).

The SVG is self-contained and inert: only ``svg``, ``title``, ``g``, ``rect``,
``circle`` and ``polygon`` elements, numeric attributes and validated colours;
the prompt appears only as escaped text in ``<title>``.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import math
import re
from typing import Any
from xml.sax.saxutils import escape

from .base import (
    SIZE_PARAMS,
    GenerationOutput,
    GenerationRequest,
    PermanentError,
    ProgressFn,
    number_param,
    output_size,
    request_params,
)

MAX_DURATION = 600.0
MAX_TITLE_CHARS = 200
MAX_CELLS = 64  # per axis, so the SVG stays small whatever the aspect ratio
STYLES = ("grid", "rings", "stripes")
PALETTES: dict[str, tuple[str, ...]] = {
    "warm": ("#7f1d1d", "#c2410c", "#f59e0b", "#fde68a", "#fff7ed"),
    "cool": ("#0c4a6e", "#0369a1", "#38bdf8", "#a5f3fc", "#f0f9ff"),
    "mono": ("#111111", "#444444", "#777777", "#bbbbbb", "#eeeeee"),
    "pastel": ("#fbcfe8", "#ddd6fe", "#bfdbfe", "#bbf7d0", "#fef08a"),
}
_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
# Characters XML 1.0 cannot carry even escaped (controls, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Stream:
    """Deterministic pseudo-random numbers from a seed (SHA-256 in counter mode; stable across Pythons)."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def _take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def unit(self) -> float:
        """A float in [0, 1)."""
        return int.from_bytes(self._take(4), "big") / 2**32

    def below(self, n: int) -> int:
        return int(self.unit() * n)

    def between(self, low: int, high: int) -> int:
        """An int in ``low..high`` inclusive."""
        return low + self.below(high - low + 1)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _palette(params: dict[str, Any], stream: _Stream) -> tuple[str, ...]:
    value = params.get("palette")
    if value is None:
        hue = stream.unit()
        colours = []
        for i in range(5):
            r, g, b = colorsys.hls_to_rgb((hue + i * 0.13) % 1.0, 0.25 + 0.13 * i, 0.55 + 0.3 * stream.unit())
            colours.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
        return tuple(colours)
    if isinstance(value, str) and value in PALETTES:
        return PALETTES[value]
    if (
        isinstance(value, list)
        and 1 <= len(value) <= 16
        and all(isinstance(c, str) and _COLOUR.fullmatch(c) for c in value)
    ):
        return tuple(c.lower() for c in value)
    raise PermanentError(
        f"params.palette must be one of {sorted(PALETTES)} or a list of 1-16 #rgb/#rrggbb colours", error_type="invalid"
    )


def _grid(s: _Stream, w: int, h: int, colours: tuple[str, ...]) -> list[str]:
    cell = min(w, h) / s.between(4, 12)
    cols, rows = min(MAX_CELLS, max(1, round(w / cell))), min(MAX_CELLS, max(1, round(h / cell)))
    cw, ch = w / cols, h / rows
    shapes = []
    for row in range(rows):
        for col in range(cols):
            x, y, fill = col * cw, row * ch, colours[s.below(len(colours))]
            scale = 0.35 + 0.6 * s.unit()
            cx, cy, rx, ry = x + cw / 2, y + ch / 2, cw * scale / 2, ch * scale / 2
            kind = s.below(3)
            if kind == 0:
                shapes.append(
                    f'<rect x="{_num(cx - rx)}" y="{_num(cy - ry)}" width="{_num(2 * rx)}" '
                    f'height="{_num(2 * ry)}" fill="{fill}"/>'
                )
            elif kind == 1:
                shapes.append(f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="{_num(min(rx, ry))}" fill="{fill}"/>')
            else:
                points = (
                    f"{_num(cx)},{_num(cy - ry)} {_num(cx + rx)},{_num(cy)} {_num(cx)},{_num(cy + ry)} "
                    f"{_num(cx - rx)},{_num(cy)}"
                )
                shapes.append(f'<polygon points="{points}" fill="{fill}"/>')
    return shapes


def _rings(s: _Stream, w: int, h: int, colours: tuple[str, ...]) -> list[str]:
    cx, cy = w * (0.2 + 0.6 * s.unit()), h * (0.2 + 0.6 * s.unit())
    count = s.between(6, 16)
    reach = math.hypot(max(cx, w - cx), max(cy, h - cy))
    shapes = []
    for i in range(count, 0, -1):  # largest first, so smaller rings sit on top
        stroke = ""
        if s.below(3) == 0:
            stroke = f' stroke="{colours[s.below(len(colours))]}" stroke-width="{_num(1 + 4 * s.unit())}"'
        shapes.append(
            f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="{_num(reach * i / count)}" '
            f'fill="{colours[(i + s.below(2)) % len(colours)]}"{stroke}/>'
        )
    return shapes


def _stripes(s: _Stream, w: int, h: int, colours: tuple[str, ...]) -> list[str]:
    angle = s.below(180)
    count = s.between(8, 24)
    span = math.hypot(w, h)
    band = span / count
    shapes = [f'<g transform="rotate({angle} {_num(w / 2)} {_num(h / 2)})">']
    for i in range(count):
        x = w / 2 - span / 2 + i * band
        thickness = band * (0.4 + 0.6 * s.unit())
        shapes.append(
            f'<rect x="{_num(x)}" y="{_num(h / 2 - span / 2)}" width="{_num(thickness)}" '
            f'height="{_num(span)}" fill="{colours[s.below(len(colours))]}"/>'
        )
    shapes.append("</g>")
    return shapes


def _title(prompt: str) -> str:
    text = _NOT_XML.sub("", prompt)[:MAX_TITLE_CHARS]
    return escape(text)


class PatternGenerator:
    """Renders a prompt-seeded SVG pattern in ``steps`` steps of ``step_delay`` seconds."""

    name = "pattern"
    params_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            **SIZE_PARAMS,
            "palette": {
                "oneOf": [
                    {"enum": sorted(PALETTES)},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 16,
                        "items": {"type": "string", "pattern": f"^{_COLOUR.pattern}$"},
                    },
                ],
                "description": "a palette name or a list of #rgb/#rrggbb colours",
            },
            "duration": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_DURATION,
                "description": "total seconds the generation takes",
            },
        },
    }

    def __init__(self, step_delay: float = 0.25, steps: int = 8) -> None:
        if steps < 1 or not step_delay >= 0:
            raise ValueError("steps must be >= 1 and step_delay >= 0")
        self.step_delay = step_delay
        self.steps = steps

    async def generate(self, request: GenerationRequest, progress: ProgressFn) -> GenerationOutput:
        params = request_params(request)
        width, height = output_size(params)
        duration = number_param(params, "duration", 0.0, MAX_DURATION)
        step_delay = self.step_delay if duration is None else duration / self.steps
        stream = _Stream(hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass")).digest())
        colours = _palette(params, stream)  # validated before the first sleep
        style = STYLES[stream.below(len(STYLES))]
        background = colours[stream.below(len(colours))]
        shapes = {"grid": _grid, "rings": _rings, "stripes": _stripes}[style](stream, width, height, colours)
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" data-style="{style}">',
            f"<title>{_title(request.prompt)}</title>",
            f'<rect width="{width}" height="{height}" fill="{background}"/>',
        ]
        per_step = math.ceil(len(shapes) / self.steps)
        for step in range(self.steps):
            await asyncio.sleep(step_delay)
            parts.extend(shapes[step * per_step : (step + 1) * per_step])
            progress((step + 1) / self.steps)
        parts.append("</svg>\n")
        return GenerationOutput("image/svg+xml", "".join(parts).encode("utf-8"), width, height)
