"""bitk.objectives.curriculum: phase switches, the compact string form, validation (torch-free)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bitk.objectives.curriculum import Curriculum, needs_teacher


def test_importing_the_curriculum_needs_no_torch():
    code = "import sys; import bitk.objectives.curriculum; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_weights_switch_at_the_ceiling_of_the_start_fraction():
    c = Curriculum.parse("0:ce=1;0.2:ce=1,dlm=1")
    assert [c.weights_at(s, 10) for s in range(4)] == [
        {"ce": 1.0},
        {"ce": 1.0},
        {"ce": 1.0, "dlm": 1.0},
        {"ce": 1.0, "dlm": 1.0},
    ]
    assert c.phase_starts(10) == [0, 2] and c.phase_starts(11) == [0, 3]  # ceil(2.2) = 3
    assert c.weights_at(2, 11) == {"ce": 1.0} and c.weights_at(3, 11)["dlm"] == 1.0
    assert c.weights_at(500, 10) == {"ce": 1.0, "dlm": 1.0}  # past the end: the last phase


def test_start_steps_use_the_decimal_fraction():
    # 0.07 * 100 is 7.000000000000001 in floats: the phase must still start at step 7
    assert 0.07 * 100 > 7
    c = Curriculum.parse("0:ce=1;0.07:logits_kd=1")
    assert c.phase_starts(100) == [0, 7] and c.weights_at(7, 100) == {"logits_kd": 1.0}
    assert c.phase_index_at(6, 100) == 0


def test_parse_round_trips_and_describes():
    c = Curriculum.parse(" 0 : ce=1 ; 0.25: ce=0.5, logits_kd=2, attention_relation=1 ")
    assert c.phases == ((0.0, {"ce": 1.0}), (0.25, {"ce": 0.5, "logits_kd": 2.0, "attention_relation": 1.0}))
    assert str(c) == "0:ce=1;0.25:ce=0.5,logits_kd=2,attention_relation=1"
    assert Curriculum.parse(str(c)) == c
    assert (
        c.describe(8)
        == "phase 1 from 0% (step 0): ce=1 | phase 2 from 25% (step 2): ce=0.5, logits_kd=2, attention_relation=1"
    )
    assert Curriculum.parse("ce=1,dlm=0.5") == Curriculum.constant({"ce": 1, "dlm": 0.5})
    assert Curriculum([(0, {"ce": 1}), (0.5, {"lrc": 1})]).objectives() == {"ce", "lrc"}
    assert Curriculum.parse("0:ce=1,dlm=0;0.5:ce=0.5,dlm=2").all_weights() == {"ce": 1.0, "dlm": 2.0}


@pytest.mark.parametrize(
    "text, match",
    [
        ("0:ce=1;0.5:dlm=1;0.2:logits_kd=1", "strictly increase"),
        ("0:ce=1;0.5:dlm=1;0.5:logits_kd=1", "strictly increase"),
        ("0.1:ce=1", "must start at 0"),
        ("0:ce=1;1:logits_kd=1", r"in \[0, 1\)"),
        ("0:ce=1;-0.5:logits_kd=1", r"in \[0, 1\)"),
        ("0:ce=1,mlm=1", "unknown objective 'mlm'"),
        ("0:ce=-1", ">= 0"),
        ("0:ce=nan", ">= 0"),
        ("0:ce=0", "no positive weight"),
        ("0:ce=1,ce=2", "twice"),
        ("0:ce", "not name=weight"),
        ("0:ce=x", "not a number"),
        ("a:ce=1", "not a number"),
        ("0:ce=1;", "empty phase"),
        ("0:ce=1;logits_kd=1", "needs a start fraction"),
        ("", "looks like"),
    ],
)
def test_bad_curricula_raise(text, match):
    with pytest.raises(ValueError, match=match):
        Curriculum.parse(text)


def test_bad_steps_raise_and_needs_teacher():
    c = Curriculum.parse("0:ce=1")
    with pytest.raises(ValueError, match="max_steps"):
        c.weights_at(0, 0)
    with pytest.raises(ValueError, match="step"):
        c.weights_at(-1, 10)
    assert not needs_teacher("0:ce=1;0.5:ce=1,dlm=1")
    assert not needs_teacher("0:ce=1,logits_kd=0")
    assert needs_teacher(Curriculum.parse("0:ce=1;0.5:ce=1,layerwise=0.1"))


def test_the_package_exports_resolve():
    from bitk import objectives

    for name in objectives.__all__:
        assert getattr(objectives, name) is not None, name
    with pytest.raises(AttributeError):
        objectives.no_such_thing  # noqa: B018
