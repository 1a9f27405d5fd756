"""The async checkpoint's stager copies every value a checkpoint's state holds."""

from __future__ import annotations

import collections

import pytest
import torch

from lmrepro.checkpoint.dcp import _copy_classes_atomically, default_stager


class Placement:  # a plain object: its pickle reduction names its class, as DTensor placements' do
    def __init__(self, dim: int) -> None:
        self.dim = dim


def test_a_stager_without_a_copier_for_classes_is_given_one() -> None:
    stager = default_stager(torch.device("cpu"))._state_dict_stager
    stager._deepcopy_dispatch.pop(type)  # what torch 2.11's stager looks like
    state = {"order": collections.OrderedDict(w=torch.ones(2)), "placement": Placement(1)}
    with pytest.raises(KeyError):
        stager.deepcopy_with_tensor_offload(state)
    _copy_classes_atomically(stager)
    staged = stager.deepcopy_with_tensor_offload(state)
    assert isinstance(staged["order"], collections.OrderedDict) and staged["placement"].dim == 1
    assert torch.equal(staged["order"]["w"], state["order"]["w"])
    assert staged["order"]["w"].data_ptr() != state["order"]["w"].data_ptr()


def test_every_state_dict_stager_made_after_the_default_stager_copies_classes() -> None:
    from torch.distributed.checkpoint._state_dict_stager import StateDictStager

    default_stager(torch.device("cpu"))
    assert type in StateDictStager()._deepcopy_dispatch
