# fairyc: the two entry points for a fresh machine are `make demo` and `make test`.
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
FAIRYC := target/release/fairyc
PROMPT ?= What is the capital of France?

.PHONY: demo test setup packages python model ptxas build check clean fuzz-smoke

setup: packages python model ptxas

packages:
	bash scripts/install-packages.sh

python:
	bash scripts/install-python.sh

model: $(MODEL)

$(MODEL):
	bash scripts/fetch-model.sh

# NVIDIA's PTX assembler (no GPU needed): the tests assemble the generated PTX with it.
ptxas:
	bash scripts/fetch-ptxas.sh

build:
	cargo build --release --locked

check:
	cargo fmt --all -- --check
	cargo clippy --release --locked --workspace --all-targets -- -D warnings

demo: setup build
	$(FAIRYC) import $(MODEL) -o models/smollm2.fir
	$(FAIRYC) dump models/smollm2.fir --summary
	$(FAIRYC) run models/smollm2.fir --chat -p "$(PROMPT)" -n 48
	$(FAIRYC) compile $(MODEL) --quant w2 --timings -o models/smollm2-w2.fairy
	$(FAIRYC) dump models/smollm2-w2.fairy --summary

# Tests that need the model, ../shared or the openai package fail here when those are missing
# (FAIRYC_REQUIRE_ASSETS=1); a bare `cargo test` skips them and prints SKIPPED.
test: setup
	FAIRYC_REQUIRE_ASSETS=1 cargo test --release --locked --workspace
	$(MAKE) check
	$(MAKE) fuzz-smoke

# A few seconds of each fuzzer on its seed corpus (fuzz/corpus/<target>/seed-*),
# the last step of `test` (installing cargo-fuzz and the sanitizer build take a
# few minutes on two cores). cargo fuzz needs nightly features; RUSTC_BOOTSTRAP=1
# enables them on stable.
FUZZ_TARGETS := gguf import hf_json ir_text
FUZZ_SECONDS ?= 5

fuzz-smoke:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	RUSTC_BOOTSTRAP=1 cargo fuzz build
	set -e; for t in $(FUZZ_TARGETS); do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048; \
	done

clean:
	cargo clean
