# The two commands of the README:
#   make demo   set everything up (scripts/install.sh) and run the main job
#   make test   set everything up and run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON ?= $(abspath $(PY))

.PHONY: setup demo test doctor
setup:
	bash scripts/install.sh

demo: setup
	$(PY) examples/lenet/run_demo.py --out demo-output

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

doctor: setup
	$(VENV)/bin/hovcaffe doctor
