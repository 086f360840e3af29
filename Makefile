# The two commands of the README:
#   make run    build ferry and start the order service on the embedded SQLite broker
#   make test   build ferry and run the whole test suite
# Both install the Debian packages they need first (scripts/deps.sh).

JOBS ?= $(shell nproc)
BUILD ?= build
ARGS ?=

.PHONY: run test test-asan build deps deps-test bench install clean

run: deps build
	./$(BUILD)/src/cli/ferry serve $(ARGS)

test: deps-test build
	ctest --test-dir $(BUILD) --output-on-failure -j1 --timeout 600

test-asan: deps-test
	cmake --preset asan
	cmake --build --preset asan -j $(JOBS)
	ctest --preset asan

build:
	cmake --preset default
	cmake --build --preset default -j $(JOBS)

deps:
	bash scripts/deps.sh build

deps-test:
	bash scripts/deps.sh test

bench: deps build
	./$(BUILD)/src/cli/ferry bench $(ARGS)

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX),)

clean:
	rm -rf build build-asan
