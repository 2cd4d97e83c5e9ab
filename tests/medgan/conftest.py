"""Fixtures of the science tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: the test machine is shared, and oversubscribed torch threads stall small ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
