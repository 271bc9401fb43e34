# Every target is one or two commands; `make` alone lists them.
.DEFAULT_GOAL := help
GO ?= go

.PHONY: help run build test lint bench soak

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

run: ## serve the dashboard at http://localhost:3000
	$(GO) run .

build: ## build ./sse-dashboard
	$(GO) build -o sse-dashboard .

test: lint ## vet, then every test with the race detector
	$(GO) test -race -count=1 ./...

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
