import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors; the
# variable must be set before triton JIT-decorates any kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Decorate the kernels now, in interpreter mode: a module that compiles for sm_90 in this
    # process (tests/test_gpu_static.py imports benchmarks/gpu/static.py, which pops the variable)
    # must not be the first to import them, whatever order pytest runs the files in.
    try:
        import magnn_kernels  # noqa: F401
    except ImportError:  # triton not installed: the triton tests skip themselves
        pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: extra threads only add contention
    (20x slower on a busy box). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
