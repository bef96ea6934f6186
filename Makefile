# Two commands a new user needs: `make demo` and `make test`. Both install first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
# onnx2tf runs `onnxsim` by name; the venv's bin must be on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint bench conformance clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[ray,test,dev,torch]"
	# A plain `pip install onnx2tf` silently resolves to an older release; pin it without deps.
	$(BIN)/python -m pip install -q --no-deps onnx2tf==1.29.24 onnx-graphsurgeon==0.6.1 sng4onnx==2.0.1 onnxsim==0.8.1 psutil
	# onnx2torch asks for torchvision (a second multi-GB torch build) for two detection ops only.
	$(BIN)/python -m pip install -q --no-deps onnx2torch==1.5.15
	rm -f $(VENV)/.installed-*
	touch $@

models/demo/digits.keras: scripts/make_demo_model.py | $(STAMP)
	$(BIN)/python scripts/make_demo_model.py --out models/demo/digits.keras

demo: $(STAMP) models/demo/digits.keras
	$(BIN)/mobilec compress mobilec/recipes/demo.yaml

# Two pytest-xdist workers (the machine has 2 cores). Each file is one work unit, so its module
# fixtures are built once; the signal-timing tests form one unit (tests/conftest.py groups
# them) and so never overlap each other. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mobilec tests scripts

bench: $(STAMP) models/demo/digits.keras
	@for s in scripts/bench_*.py; do echo "== $$s"; $(BIN)/python $$s || exit 1; done

# The conformance corpus (issue 15): 30+ architectures, every artifact; ~30 min on 2 cores.
# The corpus is built once (cached in conformance-corpus/); CONFORMANCE.md and conformance.json
# land at the repository root.
conformance: $(STAMP)
	$(BIN)/python scripts/conformance_models.py --out conformance-corpus
	$(BIN)/python scripts/conformance.py --corpus conformance-corpus --out conformance-out --report-dir . $(CONFORMANCE_ARGS)

clean:
	rm -rf mobilec-out models/demo .pytest_cache conformance-out conformance-corpus
