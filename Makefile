# weftnet: `make demo` and `make test` install what they need themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
# gcc, libgcrypt20-dev and python3-dev build the data plane's C extension (weftnet.fastpath).
APT_PKGS := gcc libgcrypt20-dev python3-dev wireguard-go wireguard-tools iperf3 nftables iproute2 iputils-ping postgresql bind9-dnsutils dnsmasq-base dnsperf haproxy prometheus miniupnpd-nftables chromium
# Installed without their recommends (chromium's pull in a desktop); node/npm only if missing.
APT_LEAN := chromium nodejs npm
OP_DIR := tests/oidc/op
OP_STAMP := $(OP_DIR)/node_modules/.installed
STAMP := $(VENV)/.installed

.PHONY: install apt test unit lab bench bench-control lint demo clean

# Browser tests drive Debian's chromium: never `playwright install`.
install: apt $(STAMP)
	@$(PY) -m weftlab.resolved fetch >/dev/null  # unpacked for a lab namespace, never installed
	@$(MAKE) --no-print-directory $(OP_STAMP)

# Debian packages first: pip builds the C extension with them.
apt:
	@missing=""; lean=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || \
		case " $(APT_LEAN) " in *" $$p "*) lean="$$lean $$p";; *) missing="$$missing $$p";; esac; done; \
	command -v node >/dev/null 2>&1 || lean="$$lean nodejs"; \
	command -v npm >/dev/null 2>&1 || lean="$$lean npm"; \
	if [ -n "$$missing$$lean" ]; then \
		echo "installing Debian packages:$$missing$$lean"; \
		apt-get update -qq || exit 1; \
		export DEBIAN_FRONTEND=noninteractive; \
		if [ -n "$$missing" ]; then apt-get install -y -qq $$missing >/dev/null || exit 1; fi; \
		if [ -n "$$lean" ]; then apt-get install -y -qq --no-install-recommends $$lean >/dev/null || exit 1; fi; \
	fi

# The test OpenID Provider (tests/oidc/op), reinstalled when node_modules is missing or
# older than the lockfile.
$(OP_STAMP): $(OP_DIR)/package-lock.json
	npm ci --no-audit --no-fund --prefix $(OP_DIR)
	touch $@

# Reinstalled (the C extension rebuilt) when the project or the extension's source changes.
$(STAMP): pyproject.toml src/weftnet/fastpath/_fastpath.c | apt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The tests outside the lab on TEST_WORKERS workers (pytest-xdist: they mostly wait on
# servers and subprocesses); the lab's on LAB_WORKERS (each lab's namespaces carry its
# process id); then the tests marked `exclusive` (throughput, tight time windows, latency
# compared with an idle baseline) one at a time with nothing else running. All three
# always run; any failing fails the target.
TEST_WORKERS ?= 3
LAB_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -ra -m 'not lab and not exclusive' -n $(TEST_WORKERS) --durations=10; a=$$?; \
	$(PY) -m pytest -q -ra -m 'lab and not exclusive' -n $(LAB_WORKERS) --durations=20; b=$$?; \
	$(PY) -m pytest -q -ra -m 'exclusive' --durations=10; c=$$?; \
	test $$a -eq 0 -a $$b -eq 0 -a $$c -eq 0

unit: install
	$(PY) -m pytest -q -ra -m 'not lab' -n $(TEST_WORKERS)

# `make bench BENCH_ARGS="--only wggo-wggo,weftd-wggo --wireguard-go PATH"`: see bench/run.py.
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.dns
	$(PY) -m bench.netstack

# The control plane under 100, 1,000 and 5,000 simulated nodes, on SQLite and PostgreSQL.
# Shorter: `make bench-control BENCH_CONTROL_ARGS="--sizes 100,1000 --db sqlite"`.
bench-control: install
	$(PY) -m bench.controlload $(BENCH_CONTROL_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layering.py

demo: install
	$(PY) -m weftlab.demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
