# imwatch: `make help` lists the targets.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/imwatch/imwatch/internal/cli.Version=$(VERSION)
BIN      := bin/imwatch

.PHONY: help build test test-deps unit fuzz bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/imwatch
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/imwatch

test-deps: ## install what the tests need (Debian packages, Go modules)
	./scripts/test-deps.sh
	$(GO) mod download

test: test-deps ## run every test, the integration tests against real servers included
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -timeout 20m ./internal/im/protocol/ ./internal/im/client/ ./internal/im/cluster/ ./internal/im/gateway/ ./pkg/imtrace/ ./internal/probe/ ./internal/fault/

unit: ## run the tests quickly, without installing anything
	$(GO) test -count=1 ./...

fuzz: ## fuzz every decoder for FUZZTIME each (default 30s)
	./scripts/fuzz.sh $(or $(FUZZTIME),30s)

bench: build ## run the benchmarks under bench/ (see docs/benchmarks.md)
	$(GO) test -run '^$$' -bench . -benchmem ./internal/... ./pkg/...
	./bench/im-delivery.sh

lint: ## vet and staticcheck-style checks
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || (echo "gofmt needed:"; gofmt -l .; exit 1)

clean: ## remove build output
	rm -rf bin
