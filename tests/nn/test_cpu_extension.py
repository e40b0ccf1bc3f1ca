"""bitk.nn.cpu_extension: which tensors the C++ passes read."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bitk.nn.cpu_extension import contiguous_data, holds_data


class _Wrapped(torch.Tensor):
    pass


def test_plain_tensors_and_parameters_hold_their_data():
    t = torch.randn(3, 4)
    assert holds_data(t, torch.nn.Parameter(torch.randn(4)), t.T)
    assert holds_data()


def test_fake_tensors_and_subclasses_do_not():
    with FakeTensorMode():
        fake = torch.empty(3, 4)
    assert not holds_data(fake)
    assert not holds_data(torch.randn(3), torch.randn(2).as_subclass(_Wrapped))


def test_contiguous_data_also_asks_for_contiguous_memory():
    t = torch.randn(3, 4)
    assert contiguous_data(t, torch.nn.Parameter(torch.randn(4)))
    assert not contiguous_data(t, t.T)
    with FakeTensorMode():
        fake = torch.empty(3, 4)
    assert not contiguous_data(fake)
