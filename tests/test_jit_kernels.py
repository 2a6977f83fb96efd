"""The optional numba kernels load where numba is installed; a kernel that cannot is reported, not hidden."""

from __future__ import annotations

import logging

import pytest

from agebias.finetune import bf16_prelu, bf16_weights
from agebias.finetune.jit_kernels import load_kernel, numba_installed

pytestmark = pytest.mark.skipif(not numba_installed(), reason="numba is not installed (agebias[fast])")


@pytest.mark.parametrize("loader", [bf16_weights._kernel, bf16_weights._adam_kernel, bf16_prelu._kernel],
                         ids=["sgd", "adam", "prelu"])
def test_every_kernel_loads_where_numba_is_installed(loader, monkeypatch):
    monkeypatch.delenv("AGEBIAS_NO_JIT", raising=False)
    loader.cache_clear()
    try:
        assert loader() is not None
    finally:
        loader.cache_clear()


def test_a_kernel_that_cannot_be_imported_is_reported_and_the_torch_path_runs(caplog, monkeypatch):
    monkeypatch.delenv("AGEBIAS_NO_JIT", raising=False)
    with caplog.at_level(logging.WARNING, logger="agebias.finetune.jit_kernels"):
        got = load_kernel("agebias.finetune.no_such_kernel", "k", "the compiled test step", "torch's runs instead")
    assert got is None
    assert "the compiled test step is not usable here (ModuleNotFoundError" in caplog.text
    assert "torch's runs instead" in caplog.text


def test_agebias_no_jit_turns_every_kernel_off_silently(caplog, monkeypatch):
    monkeypatch.setenv("AGEBIAS_NO_JIT", "1")
    with caplog.at_level(logging.WARNING):
        assert load_kernel("agebias.finetune.bf16_sgd_kernel", "sgd_bf16", "x", "y") is None
    assert caplog.text == ""
