# The README's commands. Both work from a fresh clone with only Python 3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs
DEVICE ?= cpu
ARCH ?= vgg16_bn

.PHONY: demo test bench bench-features bench-top bench-explain lint clean

# (Re)install when pyproject.toml changes; the venv itself is made once.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

## demo: set up, then draw conv1's filters and the feature maps of the photos in examples/
demo: $(STAMP)
	@if $(BIN)/vggviz weights --arch $(ARCH) >/dev/null 2>&1; then W=imagenet; \
	elif $(BIN)/vggviz weights download --arch $(ARCH); then W=imagenet; \
	else echo "demo: ImageNet weights unavailable (offline?): drawing with --weights random instead;"; \
	     echo "      the pictures say so in their titles. Fetch them with: $(BIN)/vggviz weights download"; W=random; fi; \
	$(BIN)/vggviz features examples/photos/ --arch $(ARCH) --weights $$W -o $(OUT) && \
	echo "demo: pictures are in $(OUT)/ (open $(OUT)/index.html or $(OUT)/cat_jpg/overview.png)"

## test: the whole suite, offline, plus ruff
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

## bench: features against the tutorial and the bare forward pass (DEVICE=cuda for a GPU),
## then top's scan against the bare forward pass, its memory and pass 2, then explain against
## pytorch-grad-cam (installed in benchmarks/.cache/gradcam only, never a vggviz dependency)
bench: bench-features bench-top bench-explain

bench-features: $(STAMP)
	$(BIN)/python benchmarks/bench.py --device $(DEVICE)

bench-top: $(STAMP)
	$(BIN)/python benchmarks/bench_top.py

bench-explain: $(STAMP)
	$(BIN)/python benchmarks/bench_explain.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
	find $(OUT) -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
