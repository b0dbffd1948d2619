# nnfeat: two commands do the whole set-up on a fresh machine.
#   make demo   create .venv, install nnfeat, run the offline demo (out/demo/index.html)
#   make test   create .venv, install nnfeat with test extras, run the tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch/torchvision versions that this project's machines serve from local disk; any version in
# pyproject's ranges works elsewhere.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m nnfeat.cli demo --out out/demo

test: venv
	NNFEAT_WEIGHTS_PATH=$${NNFEAT_WEIGHTS_PATH:-$(CURDIR)/../shared/models} $(PY) -m pytest -q $(PYTEST_ARGS)

bench: venv
	NNFEAT_WEIGHTS_PATH=$${NNFEAT_WEIGHTS_PATH:-$(CURDIR)/../shared/models} $(PY) experiments/bench_render.py

clean:
	rm -rf out test-artifacts .pytest_cache
