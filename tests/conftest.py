import os

import pytest

from fastkernels.sandbox import cuda_present

# Kernels run under the Triton interpreter on CPU machines (the suite never needs a GPU); on a GPU
# machine they compile for real (the `gpu`-marked tests run there).
if not cuda_present():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write runs into the user's MLflow store (and skip MLflow's ~2-10 s startup); the
# tracking tests point the tracker at a temporary store and turn it back on.
os.environ.setdefault("FASTKERNELS_TRACKING", "0")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
