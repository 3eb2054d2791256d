# One-command set-up: every target creates what it needs on a fresh machine (Python 3.11, pip, gcc, node/npm).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
TRITON_VENV := .venv-triton
PY := $(VENV)/bin/python
GEN_STAMP := gen/python/.stamp
NODE_STAMP := clients/node/node_modules/.installed
PROTOS := $(wildcard proto/voice/v1/*.proto)
# buf breaking compares the contract with main (on main itself: with the last commit).
BREAKING_BASE ?= $(shell git merge-base HEAD main 2>/dev/null || echo HEAD)
DEV_REQS := requirements-dev.txt requirements-parity.txt services/common/requirements.txt services/tts_gateway/requirements.txt \
            services/rvc_service/requirements.txt services/rvc_service/requirements-base.txt

.PHONY: setup run test lint format bench soak clean

setup: $(VENV)/.installed $(GEN_STAMP) $(TRITON_VENV)/.installed $(NODE_STAMP)

# The development environment: both services' requirements plus test and lint tools, resolved in one pip run.
$(VENV)/.installed: $(DEV_REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	# The parity test's reference implementation pins versions that clash with ours; only its network is used.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-parity.txt
	$(PY) services/rvc_service/torchaudio_cpu.py
	$(PY) -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'voice_serving.pth').write_text('$(CURDIR)\n$(CURDIR)/gen/python\n')"
	touch $@

$(GEN_STAMP): $(PROTOS) proto/gen_python.py $(VENV)/.installed
	rm -rf gen/python
	$(PY) proto/gen_python.py --out gen/python
	touch $@

# The Triton server environment (server binary from the nvidia-pytriton wheel, Piper, Spark-TTS on torch, numpy<2).
$(TRITON_VENV)/.installed: triton/requirements.txt triton/requirements-spark.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --disable-pip-version-check -r triton/requirements.txt
	$(TRITON_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -r triton/requirements-spark.txt
	$(TRITON_VENV)/bin/python services/rvc_service/torchaudio_cpu.py
	touch $@

# The Node.js example client's packages (protobufjs's postinstall only prints a notice).
$(NODE_STAMP): clients/node/package-lock.json
	npm ci --prefix clients/node --ignore-scripts --no-audit --no-fund
	touch $@

run: setup
	$(PY) deploy/local/run_stack.py

test: setup
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd proto && ../$(VENV)/bin/buf lint && ../$(VENV)/bin/buf format -d --exit-code
	$(VENV)/bin/buf breaking proto --against '.git#ref=$(BREAKING_BASE),subdir=proto'

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	cd proto && ../$(VENV)/bin/buf format -w

bench: setup
	$(PY) benchmarks/run_all.py

# Not part of `make test`: loads the machine for minutes. Flags through SOAK_ARGS, e.g. SOAK_ARGS="--clients 32".
soak: setup
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(TRITON_VENV) gen clients/node/node_modules
