"""Which template file, and which line of it, wrote a given place of a rendered output.

A problem found after rendering (MJML that does not compile, an unknown ``<mj-...>`` element) is at an
offset of the rendered text, which is made of many files: the top template and the partials it includes.
An editor needs the file they wrote and its line. :func:`traced_render` renders again with a
:class:`TracingEnvironment`, whose templates tag every piece they output with where it came from; the
piece an offset falls in names the file and the line (:func:`origin_of`).

How a piece is placed: Jinja maps the lines of the Python it compiles a template to back to the template
(``Template.debug_info``) for expressions, not for literal text. A literal piece is found among the
template's ``data`` tokens (what the lexer cut the file into, after ``trim_blocks``/``lstrip_blocks``),
which the compiled code outputs in the same order; within a literal piece, the newlines before the offset
count. Output that a ``{% filter %}`` or ``{% set %}`` block rebuilt is placed at that block.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from jinja2 import Environment, Template

_YIELD_LITERAL = re.compile(r"^\s*yield ('.*'|\".*\")\s*$")


class _Piece(str):
    """A piece of output that knows its template file, the line it starts on, and whether it is literal
    template text (then its own newlines are the template's)."""

    origin: tuple[str, int, bool]


class TracingEnvironment(Environment):
    """An environment whose templates tag their output (:class:`_Piece`); use it for diagnosis only."""

    def get_template(self, name: Any, parent: str | None = None,
                     globals: MutableMapping[str, Any] | None = None) -> Template:
        template = super().get_template(name, parent, globals)
        if not getattr(template, "_traced", False):
            _trace(self, template)
        return template


def traced_render(env: TracingEnvironment, name: str, context: Mapping[str, Any]) -> list[_Piece]:
    """Template ``name`` rendered with ``context``, as tagged pieces in order."""
    template = env.get_template(name)
    return list(template.root_render_func(template.new_context(dict(context))))  # type: ignore[arg-type]


def origin_of(pieces: list[_Piece], offset: int) -> tuple[str, int] | None:
    """(file, line) that wrote character ``offset`` of the pieces joined; None when out of range."""
    start = 0
    for piece in pieces:
        if start <= offset < start + len(piece) or (offset == start + len(piece) and piece is pieces[-1]):
            file, line, literal = piece.origin
            return file, line + (piece.count("\n", 0, offset - start) if literal else 0)
        start += len(piece)
    return None


def _trace(env: Environment, template: Template) -> None:
    lines = _literal_lines(env, template)
    file = template.filename or template.name or "<template>"

    def tag(render: Callable[[Any], Iterator[str]]) -> Callable[[Any], Iterator[str]]:
        def traced(context: Any) -> Iterator[str]:
            generator = render(context)
            for event in generator:
                if not isinstance(event, _Piece):  # a piece from an included template keeps its own tag
                    code_line = generator.gi_frame.f_lineno if generator.gi_frame else 0  # type: ignore[attr-defined]
                    literal = code_line in lines
                    piece = _Piece(event)
                    piece.origin = (file, lines.get(code_line) or template.get_corresponding_lineno(code_line),
                                    literal)
                    event = piece
                yield event

        return traced

    template.root_render_func = tag(template.root_render_func)  # type: ignore[method-assign]
    template.blocks = {name: tag(block) for name, block in template.blocks.items()}
    template._traced = True  # type: ignore[attr-defined]


def _literal_lines(env: Environment, template: Template) -> dict[int, int]:
    """{line of a ``yield '<literal>'`` in the compiled code: the template line that literal starts on}."""
    if env.loader is None or template.name is None:
        return {}
    source = env.loader.get_source(env, template.name)[0]
    code = str(env.compile(source, template.name, template.filename, raw=True))
    data = [(line, value) for line, kind, value in env.lex(source, template.name) if kind == "data" and value]
    found: dict[int, int] = {}
    cursor = 0
    for number, code_line in enumerate(code.splitlines(), 1):
        match = _YIELD_LITERAL.match(code_line)
        if not match:
            continue
        literal = ast.literal_eval(match.group(1))
        # the compiled code outputs the data in the order of the file (a {% block %} is compiled after the
        # rest: then look again from the start)
        for start in (cursor, 0):
            hit = next((n for n in range(start, len(data)) if literal.startswith(data[n][1])
                        or data[n][1].startswith(literal)), None)
            if hit is not None:
                found[number] = data[hit][0]
                cursor = hit + 1
                break
    return found
