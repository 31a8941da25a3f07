import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    # Deterministic and polite on the 2-core CI machine.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A finished tiny-preset training run, shared by read-only tests."""
    from devarray.train import make_config, train

    path = tmp_path_factory.mktemp("stores") / "lr-tiny-s0.zarr"
    train(path, make_config("lr", "tiny", seed=0), progress=False)
    return path
