# comjobs — see README.md. Every target works on a fresh clone with Go installed.
GO       ?= go
BIN      ?= bin/comjobs
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
PKGS     := ./...
FUZZTIME ?= 20s
STATICCHECK_VERSION ?= v0.8.2

.PHONY: all build test lint demo bench fuzz chaos clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/comjobs

## test: the whole suite with the race detector (fuzz seed corpora and the short chaos run included).
test:
	$(GO) test -race -count=1 -timeout 8m $(PKGS)

lint:
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)

## demo: embedded NATS, the COM simulator, console notifications and a batch of real requests.
demo:
	$(GO) run ./cmd/comjobs demo

## bench: the comparison table (pipeline, tracking, notifying; bench/) and the Go micro-benchmarks
## (decode+validate a request, encode an event, render a Slack message). Numbers are printed, never asserted.
bench:
	$(GO) test -run '^TestBenchTable$$' -count=1 -v -timeout 30m ./bench/ -args -bench.table
	$(GO) test -run '^$$' -bench . -benchmem -count=1 $(PKGS)

## fuzz: each fuzz target in turn for FUZZTIME (go test -fuzz takes one target per run).
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

## chaos: the long chaos run (10,000 requests on a 3-node cluster under faults) and its figures.
chaos:
	$(GO) test -count=1 -timeout 60m -run TestChaos ./chaos -chaos.requests=10000 -v

clean:
	rm -rf bin comjobs-data
	$(GO) clean -testcache
