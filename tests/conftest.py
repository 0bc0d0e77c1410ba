"""Fixtures shared by the test files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .corpus import training_corpus


@pytest.fixture
def one_thread():
    """torch on one thread for the test (training runs in the workflow use
    resources.threads 1), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def manifest(tmp_path_factory) -> Path:
    """The manifest of the training tests' corpus (tests/corpus.py), written once: the
    tests only read it."""
    return training_corpus(tmp_path_factory.mktemp("data"))
