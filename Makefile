# Every target is one or two commands; `make` alone lists them.
.DEFAULT_GOAL := help
GO ?= go
# A pipeline fails when go test does, not only when its last command does.
SHELL := bash
.SHELLFLAGS := -o pipefail -c

.PHONY: help check run build test stress lint fuzz soak bench bench-peers

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# Most tests marked parallel wait on timers and sockets, not on the CPU: -parallel 16 lets
# them wait together on 2 cores.
check: ## gofmt, go vet and the fast tests (go test -short), about 20 s with a warm build cache: the inner loop
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) test -short -race -count=1 -parallel 16 ./...

# At a terminal the server gets a process group of its own that holds the terminal (set -m),
# so Ctrl-C reaches it alone and make ends with the server's exit status.
run: build ## serve the dashboard at http://localhost:3000, with the demo topic dashboard
	@if [ -t 0 ]; then set -m; fi; ./sse-dashboard -demo-topic dashboard; exit $$?

build: ## build ./sse-dashboard
	$(GO) build -buildvcs=true -o sse-dashboard .

# The random-cuts delivery test makes 2.8 million deliveries: under the race detector it runs
# smaller, then whole without it; the replay-memory test measures memory, which the race
# detector inflates, so it runs only without it.
test: lint ## vet, every test with the race detector, then a short fuzz run
	@test -n "$$CHROME_PATH" || command -v chromium >/dev/null || echo "*** chromium not found: the browser tests will be SKIPPED (apt-get install chromium) ***"
	@test -n "$$NGINX_PATH" || test -x /usr/sbin/nginx || command -v nginx >/dev/null || echo "*** nginx not found: the proxy tests will be SKIPPED (apt-get install nginx) ***"
	$(GO) test -race -count=1 -parallel 16 -timeout 20m ./... -cut-subscribers=100 -cut-publishes=1000
	$(GO) test -count=1 -run '^(TestHub_ThousandSubscribersCutAtRandomLoseNothing|TestNATS_ThousandsOfSlowClientsResumingFromAnOldIdHoldBoundedMemory)$$' .
	$(MAKE) --no-print-directory fuzz FUZZTIME=5000x

fuzz: ## fuzz the frame writer, the Last-Event-ID parser, Accept's weights and list, the publish body, topic patterns, token extraction, Mercure's matchers, publish form and token claims (FUZZTIME=1m)
	$(GO) test -run '^$$' -fuzz '^FuzzAppendEvent$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzParseLastEventID$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzParseQValue$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzAcceptsEventStream$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzParsePublish$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzMatchTopic$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzTokenFrom$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzTopicMatcher$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzMercurePublishForm$$' -fuzztime $(or $(FUZZTIME),1m) .
	$(GO) test -run '^$$' -fuzz '^FuzzMercureClaims$$' -fuzztime $(or $(FUZZTIME),1m) .

soak: ## the long fault scenarios, with a table of what they left behind
	$(GO) test -count=1 -timeout 20m -run '^Test(Fault|Hostile)_' -v . -soak | grep -Ev '^(=== RUN|--- PASS|    --- PASS)'

stress: ## the whole suite three times while busy loops hold every core (a busy machine)
	@hogs=; for i in $$(seq $$(nproc)); do timeout 45m sh -c 'while :; do :; done' & hogs="$$hogs $$!"; done; \
	$(GO) test -race -count=$(or $(COUNT),3) -parallel 16 -timeout 45m ./... -cut-subscribers=100 -cut-publishes=1000; status=$$?; kill $$hogs; exit $$status

lint: ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# The symbols and DWARF stay in the test binary: BenchmarkStreams and BenchmarkFanout read
# the servers' goroutine stacks with them.
bench: ## three servers side by side, thousands of streams, 10k subscribers of one topic beside the floor and through NATS (minutes), then the frame writer, one stream, one topic stream public and private, a token verified, and Mercure's matching
	$(GO) test -count=1 -timeout 20m -ldflags='-s=false -w=false' -run '^$$' -bench '^BenchmarkStreams$$' -benchtime 1x .
	$(GO) test -count=1 -timeout 20m -ldflags='-s=false -w=false' -run '^$$' -bench '^BenchmarkFanout$$' -benchtime 1x .
	$(GO) test -count=1 -run '^$$' -bench '^Benchmark(WriteEvent|Stream|TopicStream|VerifyToken|MercureFanout)$$' -benchmem .

# Centrifugo is built once, with go install, into a cache outside the repository.
PEERS ?= $(HOME)/.cache/sse-dashboard-peers
CENTRIFUGO ?= $(PEERS)/centrifugo-v6.9.1/centrifugo
bench-peers: ## the fan-out workloads against this service and Centrifugo v6.9.1, one table (the first run builds Centrifugo: minutes)
	@test -x $(CENTRIFUGO) || { echo "building Centrifugo v6.9.1 into $(dir $(CENTRIFUGO))"; GOBIN=$(dir $(CENTRIFUGO)) $(GO) install github.com/centrifugal/centrifugo/v6@v6.9.1; }
	CENTRIFUGO=$(CENTRIFUGO) $(GO) test -count=1 -timeout 20m -ldflags='-s=false -w=false' -run '^$$' -bench '^BenchmarkPeers$$' -benchtime 1x .
