"""Front matter is read by libyaml where PyYAML has it, and must read exactly as PyYAML's pure-Python loader
reads it: the same values, the same line for every key, the same rejection in the same words."""

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter.errors import IngestError
from newsletter.ingest import markdown
from newsletter.resources import sample_summaries_dir

pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML was built without libyaml")

PATH = Path("paper.md")


def outcome(load: Any, text: str) -> tuple[Any, ...]:
    """What a loader makes of ``text``: its value and each key's line, or the rejection's message."""
    try:
        root, data = load(PATH, text)
    except IngestError as exc:
        return ("rejected", str(exc))
    lines = [(key.value, key.start_mark.line) for key, _ in root.value] if isinstance(root, yaml.MappingNode) else []
    return ("read", _comparable(data), lines)


def _comparable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"  # nan != nan: compare its spelling
    if isinstance(value, dict):
        return [(_comparable(k), _comparable(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value, type(value).__name__


def test_the_fast_loader_is_libyaml() -> None:
    assert markdown._FastLoader is not None and issubclass(markdown._FastLoader, yaml.CSafeLoader)


def test_every_bundled_sample_reads_the_same_with_both_loaders() -> None:
    samples = sorted(sample_summaries_dir().glob("*.md"))
    assert samples
    for sample in samples:
        lines = sample.read_text(encoding="utf-8").splitlines()
        end = lines.index("---", 1)
        text = "\n".join(lines[1:end])
        assert outcome(markdown._load_yaml, text) == outcome(markdown._load_yaml_purely, text)


scalars = st.one_of(
    st.text(), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.dates(), st.datetimes(),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8
)
documents = st.dictionaries(st.text(min_size=1), values, max_size=6).map(
    lambda data: yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
)
# Hand-written front matter: YAML's own punctuation, quotes, indentation and breaks in any order, so that
# most of these are invalid in one way or another, and the rest valid in unusual ones.
YAMLISH = " \t\n:-?#&*!|>'\"%@`,[]{}0123456789.eE+aTtnNyYx~\\é€\u2028\x85"
scribbles = st.text(alphabet=YAMLISH, max_size=60)
lines_of_fields = st.lists(
    st.tuples(st.sampled_from(["title", "date", "tags", "url", "a b", "'q'", "- x", "? k"]), scribbles),
    max_size=5,
).map(lambda pairs: "\n".join(f"{key}: {value}" for key, value in pairs))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, scribbles, lines_of_fields))
@example("title: a\ntitle: b")  # a key given twice: the last one wins in both
@example("date: 2026-11-31")  # a date that does not exist
@example("title: [unclosed")
@example("title: one\n  two: three")
@example("title: a\x00b")
@example("n: " + "9" * 5000)
def test_libyaml_reads_front_matter_as_the_pure_loader_does(text: str) -> None:
    assert outcome(markdown._load_yaml, text) == outcome(markdown._load_yaml_purely, text)
