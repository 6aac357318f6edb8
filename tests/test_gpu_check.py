"""scripts/gpu-check on a machine without CUDA: it says so and fails; its Python part imports
and computes its figures (the GPU parts themselves run only on a GPU machine)."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from tests.cli_helpers import REPO_ROOT


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_the_script_says_so_and_exits_non_zero():
    done = subprocess.run([str(REPO_ROOT / "scripts" / "gpu-check")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "gpu-check: no CUDA device visible" in done.stderr and "needs an NVIDIA GPU" in done.stderr
    assert "PASS" not in done.stdout


def test_python_part_refuses_to_run_without_cuda(capsys, monkeypatch):
    gpu_check = load_gpu_check()
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--parts", "loss"])
    assert gpu_check.main() == 2
    assert "no CUDA device visible" in capsys.readouterr().err


def test_mfu_uses_the_dense_bf16_peak_of_the_named_gpu():
    gpu_check = load_gpu_check()
    assert gpu_check.mfu(10_000, 6 * 135e6, 1, "NVIDIA H200") == pytest.approx(10_000 * 6 * 135e6 / 989e12)
    assert gpu_check.mfu(10_000, 6 * 135e6, 2, "NVIDIA A100-SXM4-80GB") == pytest.approx(
        10_000 * 6 * 135e6 / (2 * 312e12))
    assert gpu_check.mfu(10_000, 6 * 135e6, 1, "Some Future GPU") is None


def test_result_lines_say_pass_or_fail_with_the_figures():
    gpu_check = load_gpu_check()
    line = gpu_check.result_line("sft-full", True, "loss 2.1 -> 1.9", 12345.6, 0.123, 3.456)
    assert line.startswith("PASS  sft-full") and "12,346 tok/s" in line and "MFU 12.3%" in line
    assert "peak 3.46 GB" in line
    assert gpu_check.result_line("qlora", False, "ImportError: bitsandbytes").startswith("FAIL  qlora")
    assert "MFU n/a" in gpu_check.result_line("loss", True, "", 1.0, None, None)
