import pytest
from trainer_processes import setup_run, train


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tiny_data):
    """An uninterrupted 1-process segment 0 → 24 of a 24-step run: the losses every layout must match."""
    tmp = tmp_path_factory.mktemp("reference")
    config, step0 = setup_run(tmp, tiny_data, "ref", training={"steps": 24})
    train(config, step0, tmp / "ref" / "checkpoints" / "step-24", 24)
    return tmp / "ref" / "checkpoints" / "step-24"
