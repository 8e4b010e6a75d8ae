# The two commands a newcomer runs:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit services clean

demo: $(VENV)/.installed-demo
	$(BIN)/liftguard demo --events-out out/demo-events.jsonl --snapshot-out out/demo-snapshot.png

test: $(VENV)/.installed-test services lint typecheck unit

$(VENV)/.installed-demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[device]'
	touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[device,fleet,train,plots,test]'
	touch $@ $(VENV)/.installed-demo

# Mosquitto, PostgreSQL and Chromium from the OS packages when missing; tests start their own instances.
services:
	scripts/ensure_services.sh

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy contract edge fleet tools firmware_bridge

unit:
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out build *.egg-info
