# feedbackbot: `make run` installs and starts the service, `make test` installs and runs the
# tests, `make stop` stops what `make run` started, `make bench` runs the benchmark suite and
# writes docs/benchmarks.md. See README.md.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
SYSTEM_PYTHON ?= python3

.PHONY: run stop status deploy test bench install install-test install-bench nginx browser

run: install nginx
	$(PYTHON) -m feedbackbot.service start

stop:
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m feedbackbot.service stop; else echo "feedbackbot is not installed, so nothing runs."; fi

status:
	$(PYTHON) -m feedbackbot.service status

# Applies an edited serve_config.yaml to the running service.
deploy:
	$(PYTHON) -m feedbackbot.service deploy

test: install-test nginx browser
	$(PYTHON) -m pytest

# About 19 minutes on 2 cores. BENCH_ARGS passes options, for example BENCH_ARGS=--quick for
# a smoke run; see `.venv/bin/python -m bench.run --help`.
bench: install-bench nginx
	$(PYTHON) -m bench.run $(BENCH_ARGS)

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

install-bench: $(VENV)/.installed-bench

# torch comes first and pinned: a plain "torch" requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install --quiet -e '.[bench]'
	touch $@

# The gateway needs Nginx and its njs module, which hashes each request's API key.
NJS_MODULE ?= /usr/lib/nginx/modules/ngx_http_js_module.so

nginx:
	@{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } && test -f $(NJS_MODULE) || { \
		echo "Installing nginx and libnginx-mod-http-js with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx libnginx-mod-http-js; }

# tests/integration/test_browser.py drives Debian's Chromium through the chromium-driver of
# the same version, both from apt-get.
browser:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { \
		echo "Installing chromium and chromium-driver with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }
