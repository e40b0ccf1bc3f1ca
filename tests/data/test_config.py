"""DataConfig: sources as paths or mappings, their names and weights, the mixture settings."""

from __future__ import annotations

import pytest

from bitk.data import DataConfig
from bitk.data.config import SourceSpec, source_name


def test_sources_are_named_by_stem_or_name():
    cfg = DataConfig(
        sources=[
            "default",
            "data/web.jsonl",
            "corpora/code/",
            "HuggingFaceFW/fineweb-edu",
            {"path": "x/a.jsonl", "name": "math", "weight": 2, "text_field": "body"},
            {"path": "owner/set", "split": "validation", "subset": "en"},
        ]
    )
    specs = cfg.specs()
    assert [s.name for s in specs] == ["default", "web", "code", "fineweb-edu", "math", "set"]
    assert [s.weight for s in specs] == [1, 1, 1, 1, 2, 1]
    assert specs[4] == SourceSpec("x/a.jsonl", "math", 2.0, "body")
    assert (specs[5].split, specs[5].subset, specs[5].text_field) == ("validation", "en", "text")
    assert source_name("a/b.parquet") == "b"
    cfg.validate()


def test_weights_list_still_applies():
    specs = DataConfig(sources=["default", "a.jsonl"], weights=[3.0, 1.0]).specs()
    assert [(s.name, s.weight) for s in specs] == [("default", 3.0), ("a", 1.0)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"sources": ["a/web.jsonl", "b/web.jsonl"]},
            r"two data sources are named 'web' \(a/web.jsonl and b/web.jsonl\)",
        ),
        ({"sources": [{"path": "a.jsonl", "colour": 1}]}, r"data.sources\[0\] has the unknown key 'colour'"),
        ({"sources": [{"name": "x"}]}, r"data.sources\[0\] needs a path"),
        ({"sources": [{"path": "a.jsonl", "name": "a/b"}]}, r"data.sources\[0\].name must be"),
        ({"sources": [{"path": "a.jsonl", "weight": 0}]}, r"data.sources\[0\].weight must be in \(0.0, inf\]"),
        ({"sources": [{"path": "a.jsonl", "weight": 2}], "weights": [1.0]}, "give the weights one way"),
        ({"sources": [3]}, r"data.sources\[0\] must be a source"),
        ({"sources": [""]}, r"data.sources\[0\] is an empty string"),
        ({"sources": ["a", "b"], "weights": [1.0]}, "data.weights has 1 entries for 2 sources"),
        ({"mixture": "learned"}, "data.mixture must be one of fixed, influence"),
        ({"mixture": "influence"}, "data.mixture=influence needs data.probe"),
        ({"mixture_floor": 1.0}, r"data.mixture_floor must be in \[0.0, 1.0\)"),
        ({"mixture_temperature": 0}, r"data.mixture_temperature must be in \(0.0, inf\]"),
        ({"mixture_every": 0}, "data.mixture_every must be >= 1"),
        ({"probe": ""}, "data.probe is an empty string"),
        ({"probe": {"path": "x", "weight": 2}}, "data.probe has the unknown key .weight."),
    ],
)
def test_bad_settings_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**changes).validate()
