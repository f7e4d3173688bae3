# The two commands of the README:
#   make demo   set everything up (scripts/install.sh) and run the main job
#   make test   set everything up and run the test suite
# and what CI runs (.ci/run): make ci = make test + the data tests in the petastorm profile.
VENV ?= .venv
PETASTORM_VENV ?= .venv-petastorm
PY := $(VENV)/bin/python
DATA_TESTS := tests/unit/test_data_*.py
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON ?= $(abspath $(PY))
# Compiled kernels of the fast-path tests kept between runs (a cold cache costs ~50 s of compiling).
export TORCHINDUCTOR_CACHE_DIR ?= $(HOME)/.cache/hovcaffe/torchinductor

.PHONY: setup setup-petastorm demo test test-fast test-petastorm ci doctor
setup:
	bash scripts/install.sh

# petastorm 0.13.1's stack (pyarrow 14, numpy 1.26) in its own venv; no Horovod (reused from the
# wheel cache with HOVCAFFE_WITH_HOROVOD=1).
setup-petastorm:
	HOVCAFFE_PROFILE=petastorm HOVCAFFE_VENV=$(PETASTORM_VENV) bash scripts/install.sh

demo: setup
	$(PY) examples/lenet/run_demo.py --out demo-output

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 tests

# The development subset: no Spark, no ranks, nothing marked slow (a few minutes on 2 cores).
test-fast:
	$(PY) -m pytest -q -p no:cacheprovider -m "not (slow or spark or distributed)" tests

# The data tests where petastorm is importable: petastorm.make_reader reads `hovcaffe convert`
# output, and hovcaffe reads what real petastorm wrote.
test-petastorm: setup-petastorm
	PYSPARK_PYTHON=$(abspath $(PETASTORM_VENV))/bin/python $(PETASTORM_VENV)/bin/python -m pytest -q \
	  -p no:cacheprovider $(DATA_TESTS)

ci: test test-petastorm

doctor: setup
	$(VENV)/bin/hovcaffe doctor
