# svcproxy — build, test, lab and bench.
#
#   make lab            the teaching lab (MODE=iptables|ipvs|userspace)
#   make test           unit tests, then the end-to-end suites in network
#                       namespaces (and IPVS in a VM when the host has none)
#   make bench          the modes side by side
#   make deps           install the system packages the above need (apt)

GO      ?= go
BIN     := bin/svcproxy
MODE    ?= iptables
APT_PKGS := iptables ipset ipvsadm conntrack iproute2 curl etcd-server

.PHONY: all build deps kubetools test unit e2e lab lab-down bench clean

include e2e/vm/vm.mk

all: build

build:
	$(GO) build -o $(BIN) ./cmd/svcproxy

# deps installs what the lab and the tests need when it is missing.
deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./proxier/... ./iptables/... ./userspace/... ./ipvs/... ./cmd/...

# The end-to-end suites re-exec themselves into a throwaway network
# namespace: nothing they do reaches the host's own.
# IPVS scenarios run inside the VM (vm-image) when the host has no IPVS.
# kube-apiserver and kube-proxy for the real-apiserver tests and the bench
# peers, built from k8s.io/kubernetes in e2e/kubetools (its own module) and
# cached in /var/cache/svcproxy-kube: minutes the first time, then instant.
kubetools:
	e2e/kubetools/build.sh

e2e: deps vm-image kubetools build
	$(GO) test -count=1 -timeout 25m ./e2e/...

test: deps vm-image build unit e2e

lab: deps build
	@if [ "$(MODE)" = ipvs ]; then $(MAKE) --no-print-directory vm-image; fi
	./$(BIN) lab --mode=$(MODE)

lab-down: build
	./$(BIN) lab --down

# bench writes docs/bench/REPORT.md (plots, JSON, CSV beside it). Pass
# flags with BENCH_ARGS, e.g. make bench BENCH_ARGS=--quick. The upstream
# kube-proxy peers run when e2e/kubetools/build.sh has cached their binaries
# (and etcd is installed); otherwise the report lists them as absent.
BENCH_ARGS ?=
bench: deps build
	./$(BIN) bench $(BENCH_ARGS)

clean:
	rm -rf bin
