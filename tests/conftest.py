import os

import pytest
import torch

# two cores: keep intra-op threads bounded so parallel helpers and CI do not oversubscribe
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
