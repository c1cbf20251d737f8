# weftnet: `make demo` and `make test` install what they need themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PKGS := wireguard-go wireguard-tools iperf3 nftables iproute2 iputils-ping postgresql bind9-dnsutils dnsmasq-base dnsperf
STAMP := $(VENV)/.installed

.PHONY: install test unit lab bench lint demo clean

install: $(STAMP)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PY) -m weftlab.resolved fetch >/dev/null  # unpacked for a lab namespace, never installed

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -ra

unit: install
	$(PY) -m pytest -q -ra -m 'not lab'

bench: install
	$(PY) -m bench.run
	$(PY) -m bench.dns

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layering.py

demo: install
	$(PY) -m weftlab.demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
