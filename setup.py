"""Build and install the ``fba`` package.

``kernels/`` is installed as ``fba.kernels`` and ``csrc/cpu`` is compiled into ``fba._C`` (plain pybind11
over NumPy: no torch headers, so it builds in seconds on any machine). The CUDA sources in ``csrc/cuda`` are
built into ``fba._C_cuda`` only when ``FBA_BUILD_CUDA=1``; otherwise ``fba.kernels`` JIT-compiles them on first
use on a GPU machine, from the copy shipped as package data (``fba/kernels/cuda_sources``: ``kernels/cuda_sources``
is a link to ``csrc/cuda``).
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension
from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ext_modules = [
    Pybind11Extension(
        "fba._C",
        sorted(glob.glob("csrc/cpu/*.cpp")),
        cxx_std=17,
        extra_compile_args=["-O3"],
    )
]
cmdclass = {"build_ext": build_ext}

if os.environ.get("FBA_BUILD_CUDA") == "1":
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    ext_modules.append(
        CUDAExtension(
            "fba._C_cuda",
            sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu")),
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
        )
    )
    cmdclass = {"build_ext": BuildExtension}

setup(
    name="fba-reid",
    version="0.1.0",
    description="FBA: language-enhanced foreground/background adversarial person re-identification",
    python_requires=">=3.11",
    packages=find_packages(include=["fba", "fba.*"]) + ["fba.kernels"],
    package_dir={"fba.kernels": "kernels"},
    package_data={"fba.kernels": ["*.py", "cuda_sources/*.cu", "cuda_sources/*.cpp", "cuda_sources/*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        line.strip()
        for line in open("requirements.txt")
        if line.strip() and not line.startswith("#")
    ],
    # openvino: the CPU backend of fba embed (59 MB; make setup installs it). tracker: boxmot and motmetrics, for
    # boxmot's own tests of an fba export and the tracking benchmark (~660 MB with OpenCV, pandas and pyarrow); it
    # needs NumPy 2 and serve NumPy 1, so make setup-tracker gives it its own environment, .venv-tracker
    extras_require={
        "openvino": ["openvino>=2025.2"],
        "tracker": ["boxmot>=25.0", "motmetrics>=1.4"],
        # fba export --quantize int8 --quantizer nncf: OpenVINO's post-training quantization (with scipy, sklearn)
        "nncf": ["nncf>=3.0"],
        # fba serve: Triton Inference Server and its Python backend ship in nvidia-pytriton, which pins numpy<2
        # (the backend stub is built against NumPy 1.x; docs/serving.md)
        "serve": ["nvidia-pytriton>=0.7", "tritonclient[grpc,http]>=2.50"],
    },
    entry_points={"console_scripts": ["fba=fba.cli:main"]},
)
