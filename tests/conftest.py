"""Shared test set-up: Triton's interpreter on machines without a GPU, a fixed seed for every test, the
`device` fixture, opt-in `poison_outputs` and `one_thread` fixtures, and skipping of `gpu`-marked tests
where CUDA is absent.

TRITON_INTERPRET must be set before any `kernels` module is imported (Triton chooses interpreter or compiler
when a kernel is defined); conftest.py is imported before the test modules, so setting it here is in time.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

SEED = 0


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state."""
    random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.fixture
def device() -> str:
    """Where kernel tests run: "cuda" when a GPU is present, else "cpu" (through the interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poison_outputs(monkeypatch):
    """Kernel host functions allocate NaN-filled outputs for this test, so an unwritten element shows."""
    from tritongpt.kernels import _common

    monkeypatch.setattr(_common, "POISON_OUTPUTS", True)


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for this test: tiny models gain nothing from threads and lose a lot when
    other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    """Without CUDA the kernels run in Triton's interpreter: where this Triton and numpy cannot run it, stop with
    the reason and the fix instead of failing every kernel test for a cause outside our kernels."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        from tritongpt.kernels._common import interpreter_problem

        if interpreter_problem():
            pytest.exit(f"the kernel tests need Triton's CPU interpreter: {interpreter_problem()}", returncode=2)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests are skipped, with the reason, where there is no CUDA GPU (or no bf16)."""
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
    elif not torch.cuda.is_bf16_supported():
        skip = pytest.mark.skip(reason="needs a CUDA GPU with bf16 support")
    else:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
