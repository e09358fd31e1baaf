# Two commands do everything on a fresh machine:
#   make demo   creates .venv on first use, installs avtool, and runs the main job on generated sample data
#   make test   same set-up, then the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO ?= demo_out
SAMPLE_EGO4D = --videos $(DEMO)/sample/ego4d/v1/full_scale --metadata $(DEMO)/sample/ego4d/ego4d_train.pkl

.PHONY: demo test lint clean

$(BIN)/avtool: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/avtool
	$(BIN)/avtool env
	$(BIN)/avtool sample $(DEMO)/sample
	$(BIN)/avtool chunk $(DEMO)/sample $(DEMO)/chunks --chunk-len auto --batch-size 1024 --step-time 4 --read-speed 500 --short-side 144 --plan
	$(BIN)/avtool chunk $(DEMO)/sample $(DEMO)/chunks --chunk-len 15 --short-side 144
	$(BIN)/avtool bench io $(DEMO)/chunks --file-size-mb 256 --chunk-files 20 --output $(DEMO)/results
	$(BIN)/avtool bench decode $(DEMO)/chunks --tiny --output $(DEMO)/results
	$(BIN)/avtool plot fig5 $(DEMO)/results/decode.csv
	$(BIN)/avtool train lavila $(DEMO)/chunks/ego4d/v1/full_scale $(DEMO)/sample/ego4d/ego4d_train.pkl \
		--metadata-aux $(DEMO)/sample/ego4d/ego4d_train.rephraser.pkl \
		--ek100-root $(DEMO)/chunks/ek100 --ek100-annotations $(DEMO)/sample/ek100/annotations \
		--model tiny --no-grad-ckpt --device cpu --batch-size 32 --workers 2 --epochs 200 \
		--lr 1e-3 --no-fixed-lr --warmup-epochs 5 --eval-every 0 --eval-at-start --save-every-epochs 50 \
		--output $(DEMO)/runs/lavila
	$(BIN)/avtool eval mir $(DEMO)/runs/lavila/checkpoint_best.pt $(DEMO)/chunks/ek100 $(DEMO)/sample/ek100/annotations \
		--device cpu --workers 2
	$(BIN)/avtool bench ladder --tiny --device cpu --rows baseline,fused-decodecrop --batch-size 8 $(SAMPLE_EGO4D) \
		--data-dir $(DEMO)/bench_data --output $(DEMO)/results
	$(BIN)/avtool plot table4 $(DEMO)/results/ladder.csv
	$(BIN)/avtool bench pipeline --tiny --device cpu $(SAMPLE_EGO4D) --data-dir $(DEMO)/bench_data --output $(DEMO)/results
	$(BIN)/avtool plot fig2 $(DEMO)/results/pipeline.csv
	@echo "demo outputs are in $(DEMO)/: sample/, chunks/ (manifest.csv), results/ (io, decode, ladder and pipeline CSV/JSON with their PNGs, pipeline.txt: the verdict), runs/lavila (a tiny CPU pretraining run)"

test: $(BIN)/avtool
	$(BIN)/python -m pytest -q

lint: $(BIN)/avtool
	$(BIN)/ruff check avtool tests
	$(BIN)/ruff format --check avtool tests

clean:
	rm -rf $(DEMO) .pytest_cache
