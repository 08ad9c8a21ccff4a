# Two commands set everything up on a fresh clone:
#   make demo   - run the main job on built-in data
#   make test   - lint, then the test suite (installs Debian's chromium for the browser tests
#                 when it is missing and this machine allows it; BROWSER=no skips those tests)
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
BROWSER ?= yes

.PHONY: demo test lint browser install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch>=2.2" torchvision
	$(BIN)/pip install --quiet -e ".[test,ray]"
	@# pytorch-grad-cam, the CAM family's test oracle, without its opencv-python (which needs
	@# libGL); the headless build it also runs on comes with the test extra
	$(BIN)/pip install --quiet --no-deps "grad-cam==1.5.4"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xaiscope demo --out xaiscope-demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check --quiet src tests benchmarks

# The browser tests drive Debian's chromium (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's chromium for the browser tests (apt-get, about 20 s)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || { \
	      echo "error: apt-get could not install chromium for the browser tests; run 'apt-get install -y chromium' as root, or 'make test BROWSER=no' to skip them." >&2; exit 2; }; \
	  else \
	    echo "error: the browser tests need Debian's chromium, which only root can install; run 'sudo apt-get install -y chromium', or 'make test BROWSER=no' to skip them." >&2; exit 2; \
	  fi; }

# pytest exits 5 when it collects no tests: neither a pass nor a failure of the code, refused.
PYTEST = $(BIN)/python -m pytest -q -p no:cacheprovider
NO_TESTS = { rc=$$?; [ $$rc -ne 5 ] || echo "error: pytest collected no tests." >&2; exit $$rc; }

ifeq ($(BROWSER),no)
test: lint
	$(PYTEST) -m "not browser" || $(NO_TESTS)
else
test: lint browser
	$(PYTEST) || $(NO_TESTS)
endif

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) xaiscope-demo
