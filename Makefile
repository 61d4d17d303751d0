# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup setup-tracker test test-fast test-avx2 test-tracker bench-tracking demo bench gpu-wheels gpu-suite clean

setup: $(STAMP)

SOURCES := setup.py requirements.txt pyproject.toml $(wildcard csrc/cpu/*.cpp csrc/cpu/*.h)
comma := ,

# An environment with fba installed editable: $(1) its folder, $(2) the extras, $(3) the modules it must import.
define install_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(1)/bin/python -m pip install -q pybind11 setuptools wheel
	$(1)/bin/python -m pip install -q --no-build-isolation -e ".[$(2)]"
	$(1)/bin/python -c "import $(3)"
	touch $(1)/.installed
endef

$(STAMP): $(SOURCES)
	$(call install_venv,$(VENV),openvino$(comma)serve,fba$(comma) fba.kernels$(comma) fba._C)

# boxmot needs NumPy 2 and fba serve's Triton backend NumPy 1, so the tracker extra has its own environment:
# .venv-tracker, for boxmot's tests of an export and the tracking benchmark (docs/deployment.md).
TRACKER_VENV := .venv-tracker
TRACKER_PY := $(TRACKER_VENV)/bin/python
TRACKER_STAMP := $(TRACKER_VENV)/.installed

setup-tracker: $(TRACKER_STAMP)

$(TRACKER_STAMP): $(SOURCES)
	$(call install_venv,$(TRACKER_VENV),tracker,fba$(comma) fba._C$(comma) boxmot$(comma) motmetrics)

# boxmot's own tests of an export (skipped in make test, whose environment has no boxmot)
test-tracker: $(TRACKER_STAMP)
	$(TRACKER_PY) -m pytest -q tests/deploy/test_boxmot.py tests/benchmarks/test_bench_tracking.py $(PYTEST_ARGS)

# Does the model help a tracker? (docs/deployment.md#does-the-model-help-a-tracker)
MODEL ?= runs/demo/train/model.pt
bench-tracking: $(TRACKER_STAMP)
	$(TRACKER_PY) -m benchmarks.bench_tracking --model $(MODEL)

# make test: the whole suite (CI). make test-fast: without the `slow` tests, for the edit-test loop. Both run on
# TEST_WORKERS processes (pytest-xdist), each test file whole on one of them (tests/conftest.py); TEST_WORKERS=0
# runs in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: setup
	$(PYTEST) $(PYTEST_ARGS)

test-fast: setup
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# The whole suite as an AVX2-only CPU runs it, on any x86 machine: PyTorch's kernels, oneDNN and MKL capped at
# AVX2, and fba.utils.precision told the CPU has no native bf16 (docs/reliability.md).
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FBA_CPU_BF16=0

test-avx2: setup
	$(AVX2_ENV) $(PYTEST) $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/fba demo

BENCHMARKS := metrics cross_attention input train_step embed

bench: setup
	for name in $(BENCHMARKS); do $(PY) -m benchmarks.bench_$$name || exit 1; done

# A bare GPU machine (python3 with torch + Triton, no network): the wheels in .whl/ (benchmarks/gpu_suite_wheels.txt)
# are installed offline, then every GPU measurement runs in one call, within 8 minutes (docs/performance.md).
gpu-suite:
	PYTHONPATH=. $(PYTHON) -m benchmarks.gpu_suite

# .whl/ for the GPU machine (needs a network): wheels for its Python 3.12, DeepSpeed built as a pure-Python wheel
# (PyPI has only its sdist), and for this machine's Python the one binary wheel of DeepSpeed's dependencies
# (pydantic_core), so the rehearsal installs the same DeepSpeed set here.
GPU_WHEELS := grep -v '^\#' benchmarks/gpu_suite_wheels.txt | sed 's/ *\#.*//' | grep -v '^deepspeed' | grep .
gpu-wheels: setup
	mkdir -p .whl
	$(GPU_WHEELS) | $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl -r /dev/stdin
	$(GPU_WHEELS) | grep '^pydantic_core==' | $(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl -r /dev/stdin
	DS_BUILD_OPS=0 $(PY) -m pip wheel -q --no-deps --no-build-isolation -w .whl \
	    $$(grep '^deepspeed==' benchmarks/gpu_suite_wheels.txt | sed 's/ *\#.*//')
	du -sh .whl

clean:
	rm -rf build *.egg-info fba/*.so runs/demo
