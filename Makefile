# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create (or reuse) the project's virtual environment in .venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
export YOLO_OFFLINE := 1
export HF_HUB_OFFLINE := 1

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[dev,yolo,openvino,ncnn,search,ray]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/compress run recipes/digitdet-prune50-int8.yaml --out runs/demo --force

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
