"""bitk.nn.dispatch: the backend switch and its rules."""

from __future__ import annotations

import pytest
import torch

from bitk import nn as bnn
from bitk.nn import dispatch as bk


def test_default_is_auto_and_cpu_tensors_take_the_cpu_path():
    assert bnn.backend() == "auto"
    assert bnn.resolve(torch.device("cpu")) == "cpu"
    assert bnn.resolve(torch.device("meta")) == "reference"


def test_use_backend_restores_the_previous_setting():
    with bnn.use_backend("reference"):
        assert bnn.backend() == "reference"
        assert bnn.resolve(torch.device("cpu")) == "reference"
        with bnn.use_backend("cpu"):
            assert bnn.backend() == "cpu"
        assert bnn.backend() == "reference"
    assert bnn.backend() == "auto"


def test_use_backend_restores_after_an_error():
    with pytest.raises(RuntimeError, match="boom"), bnn.use_backend("reference"):
        raise RuntimeError("boom")
    assert bnn.backend() == "auto"


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, reference, triton, cpu"):
        bnn.set_backend("cuda")


def test_cpu_backend_refuses_other_devices():
    with bnn.use_backend("cpu"), pytest.raises(ValueError, match="CPU tensors only"):
        bnn.resolve(torch.device("cuda"))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with bnn.use_backend("triton"), pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        bnn.resolve(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with bnn.use_backend("triton"):
        assert bnn.resolve(torch.device("cpu")) == "triton"


def test_env_var_sets_the_start_value(monkeypatch):
    monkeypatch.setenv("BITK_NN_BACKEND", "reference")
    assert bk._initial() == "reference"
    monkeypatch.setenv("BITK_NN_BACKEND", "bogus")
    with pytest.warns(UserWarning, match="BITK_NN_BACKEND='bogus'"):
        assert bk._initial() == "auto"
