# The two front-door commands: `make up` runs the whole system (demo camera), `make test` runs the tests.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[train,dev]"
	touch $(STAMP)

# The [checkov] extra, alone in its own venv (its pins would downgrade the project's dependencies).
$(CHECKOV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(PYTHON) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['checkov']))" > $(CHECKOV_VENV)/requirements.txt
	$(CHECKOV_VENV)/bin/pip install -q -r $(CHECKOV_VENV)/requirements.txt
	touch $(CHECKOV_STAMP)

.PHONY: install up test services
install: $(STAMP)

up: $(STAMP)
	$(BIN)/emotion up $(ARGS)

services:
	@bash scripts/ensure-services.sh

test: $(STAMP) $(CHECKOV_STAMP) services
	$(BIN)/python -m pytest $(PYTEST_ARGS)
