# fairyc: the two entry points for a fresh machine are `make demo` and `make test`.
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
FAIRYC := target/release/fairyc
PROMPT ?= What is the capital of France?

.PHONY: demo test setup model build check clean

setup: model

model: $(MODEL)

$(MODEL):
	bash scripts/fetch-model.sh

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

test: setup
	cargo test --release --locked --workspace
	$(MAKE) check

clean:
	cargo clean
