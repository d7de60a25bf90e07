"""Which onnxruntime execution providers the user tower and ranker get (``[serve] onnx_device``),
asked of the onnxruntime installed here: the CPU build, or onnxruntime-gpu (the gpu extra)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from tailored.bundle.runtime import onnx_providers
from tailored.errors import ConfigError

CPU = ["CPUExecutionProvider"]
_HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
no_cuda = pytest.mark.skipif(_HAS_CUDA, reason="this onnxruntime has CUDAExecutionProvider")


@no_cuda
def test_auto_runs_on_the_cpu_where_onnxruntime_has_no_cuda() -> None:
    assert onnx_providers() == onnx_providers("auto") == CPU


@pytest.mark.skipif(not _HAS_CUDA, reason="this onnxruntime has no CUDAExecutionProvider")
def test_auto_asks_for_cuda_first_and_keeps_the_cpu_behind_it() -> None:
    assert onnx_providers("auto") == ["CUDAExecutionProvider", *CPU]


def test_cpu_is_the_cpu_alone_whatever_onnxruntime_has() -> None:
    assert onnx_providers("cpu") == CPU


@no_cuda
def test_cuda_without_cuda_is_refused_saying_what_to_install() -> None:
    with pytest.raises(ConfigError) as err:
        onnx_providers("cuda")
    message = str(err.value)
    assert message.startswith('onnx_device: "cuda"')
    assert "no CUDAExecutionProvider" in message and "CPUExecutionProvider" in message
    assert "pip install '.[gpu]'" in message and '"auto" or "cpu"' in message


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"onnx_device: 'gpu' is not one of"):
        onnx_providers("gpu")
