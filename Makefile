# Every target bootstraps .venv itself, so a fresh machine needs only Python 3.11+ and make.
# The four parts are separate distributions (protocol, agent, client, server; see
# docs/architecture.md), installed editable. `make demo` installs only what it runs;
# `make test` adds the `dev` dependency group of pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --disable-pip-version-check
PARTS  := --config-settings editable_mode=compat -e ./protocol -e ./agent -e ./client -e ./server
# `make install` adds the server's optional S3 store (boto3) and the dev group; `make demo` does not.
FULL_PARTS := --config-settings editable_mode=compat -e ./protocol -e ./agent -e ./client -e './server[s3]'
PART_FILES := protocol/pyproject.toml agent/pyproject.toml client/pyproject.toml server/pyproject.toml
RUNTIME := $(VENV)/.runtime
STAMP  := $(VENV)/.installed

.PHONY: install demo test soak bench lint clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade 'pip>=25.1'

$(RUNTIME): $(VENV)/bin/python $(PART_FILES)
	$(PIP) $(PARTS)
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) pyproject.toml
	$(PIP) $(FULL_PARTS) --group dev
	touch $(STAMP)

demo: $(RUNTIME)
	$(PY) -m ferry.cli.demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The randomised kill -9 test of the agent (tests/agent/test_kill_soak.py) with many trials;
# `make test` runs a few. Same seed, same kills: FERRY_SOAK_SEED=n picks another sequence.
SOAK_TRIALS ?= 200
# Then the fleet soak: two replicas on PostgreSQL behind nginx, broker, server and agent kills,
# printing reports made/stored and devices whose server view differs (bench/soak_fleet.py).
soak: install
	FERRY_SOAK_TRIALS=$(SOAK_TRIALS) $(PY) -m pytest -q tests/agent/test_kill_soak.py $(PYTEST_ARGS)
	$(PY) bench/soak_fleet.py $(SOAK_ARGS)

bench: install
	$(PIP) --group bench
	$(PIP) --group bench-zipnn || echo "zipnn did not build: bench_deltas prints its column as skipped"
	$(PY) bench/run_all.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check protocol agent client server tests bench
	$(VENV)/bin/ruff format --check protocol agent client server tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build */build */src/*.egg-info
