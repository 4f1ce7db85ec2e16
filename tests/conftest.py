"""One torch thread for every test: the models here are tiny, and two threads on a busy 2-core CI machine
stall each other (a DLN test once took 72 s instead of 3)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
