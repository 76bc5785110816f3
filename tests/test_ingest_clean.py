"""Control characters leave stored text the way they always did: strip_controls (a translate table) against
the character-by-character rule it replaced, written out here as the reference."""

import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from newsletter.ingest.clean import strip_controls


def reference(text: str, *, keep_newlines: bool = True) -> str:
    """The rule, one character at a time: tabs and other line breaks become spaces, and control, format,
    surrogate and private-use characters go, except the zero-width joiner emoji need."""
    out = []
    for char in text.replace("\r\n", "\n").replace("\r", "\n"):
        if char == "\n" and keep_newlines:
            out.append(char)
        elif char in "\t\n\u2028\u2029\x0b\x0c\x85":
            out.append(" ")
        elif unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co") or char == "\u200d":
            out.append(char)
    return "".join(out)


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(codec=None)), st.booleans())
@example("a\r\nb\rc\u2028d\x85e\tf\x0bg\x0ch\x00i\u200bj\u200dk\ue000l\ud800m\x7fn\x9bo", True)
@example("a\r\nb\rc\u2028d\x85e\tf\x0bg\x0ch\x00i\u200bj\u200dk\ue000l\ud800m\x7fn\x9bo", False)
@example("Søren Kjærgaard 👩\u200d🔬 \u00ad soft hyphen, \ufeff BOM", True)
def test_strip_controls_keeps_and_drops_what_the_character_rule_does(text: str, keep_newlines: bool) -> None:
    assert strip_controls(text, keep_newlines=keep_newlines) == reference(text, keep_newlines=keep_newlines)
