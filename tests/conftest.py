"""Shared fixtures: tiny checkpoints are built once per session under a temp dir."""

import os

import pytest

from tests.tiny_models import make_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir):
    return make_checkpoint(tiny_dir / "llama", arch="llama")


@pytest.fixture(scope="session")
def tiny_llama_tied(tiny_dir):
    return make_checkpoint(tiny_dir / "llama-tied", arch="llama", tie=True)


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_dir):
    return make_checkpoint(tiny_dir / "qwen2", arch="qwen2", template="zephyr")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_dir):
    return make_checkpoint(tiny_dir / "gpt2", arch="gpt2", tie=True)
