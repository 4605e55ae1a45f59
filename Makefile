# dinomap — `make` builds ./dinomap; `make test` runs the tests (plain and ASan+UBSan builds);
# `make bench` runs the benchmarks; `make deps` installs missing Debian packages (as root) or prints
# the exact apt-get line.

CC      ?= cc
BUILD   ?= build
PKGS    := gdal openblas libcjson inih libcrypto sqlite3
DEB_PKGS := build-essential pkg-config libgdal-dev libproj-dev libopenblas-dev libtiff-dev \
            libsqlite3-dev libcjson-dev libinih-dev libssl-dev libdnnl-dev gdal-bin python3-gdal \
            python3-jsonschema

# SIMD: AVX2+FMA when this CPU has them (override with SIMD=); the code is correct without.
SIMD    ?= $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null && echo -mavx2 -mfma) \
           $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && grep -qw avx512bw /proc/cpuinfo 2>/dev/null && grep -qw avx512vl /proc/cpuinfo 2>/dev/null && echo -mavx512f -mavx512bw -mavx512vl -mavx512dq -mprefer-vector-width=512)
OPT     ?= -O3
SAN     ?=
CFLAGS_ALL = -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -Werror -Wno-format-truncation -g -fopenmp-simd -fno-trapping-math \
             $(OPT) $(SIMD) $(SAN) -pthread $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
# oneDNN (libdnnl-dev: no pkg-config file) for the bf16 products; libgomp is its OpenMP runtime
LDLIBS_ALL = $(SAN) -pthread $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ldnnl -lgomp -ldl -lm $(LDLIBS)

# CUDA: the backend is a plugin, $(BUILD)/libdinomap_cuda.so, made by nvcc when there is one
# (/usr/local/cuda/bin/nvcc or nvcc on the PATH; NVCC= to skip it) and opened by dinomap only for
# --device cuda: dinomap links no CUDA library and its build and tests never need the plugin.
# CUDA_ARCH: Hopper machine code and compute_80 PTX (any newer GPU compiles it at load).
NVCC      ?= $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH ?= -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=compute_80
NVCCFLAGS_ALL = -std=c++17 -O3 $(CUDA_ARCH) -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror \
             -Werror all-warnings -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE $(NVCCFLAGS)
CU_SRC   := $(wildcard models/cuda/*.cu)
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
CUDA_LIB := $(if $(NVCC),$(if $(CU_SRC),$(BUILD)/libdinomap_cuda.so))

# The library: the ground floor (src/base/) and every folder below the face; src/*.c is the
# command line and is not part of it (the library links alone: tests/lib_alone.c).
CLI_SRC  := $(wildcard src/*.c)
LIB_SRC  := $(wildcard src/base/*.c models/*.c models/cpu/*.c heads/*.c tiling/*.c gis/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
BENCH_SRC := tests/bench_vit.c

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)

.PHONY: all deps deps-if-missing check-deps test test-plain test-asan bench bench-search clean demo \
        fuzz fuzz-build fuzz-check

# check-deps runs first (it may install packages); the build then runs in a sub-make so that the
# pkg-config flags are read after the install.
all: check-deps
	@$(MAKE) --no-print-directory $(BUILD)/dinomap dinomap $(CUDA_LIB)
	@[ -n "$(CUDA_LIB)" ] || echo "dinomap: no nvcc found: built without the CUDA backend (--device cpu only)"

# The plugin: the CUDA code, with the few host files it runs (none needs GDAL or a BLAS);
# statically linked CUDA runtime, cuBLASLt from the CUDA install (rpath) or the library path.
$(BUILD)/libdinomap_cuda.so: $(CU_OBJ)
	$(NVCC) $(CUDA_ARCH) -shared -o $@ $^ -lcublasLt -Xlinker -rpath,$(CUDA_HOME)/lib64

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS_ALL) -MMD -MP -c -o $@ $<

# A stand-in plugin (C, no CUDA) for the tests of the loading path and of multi-GPU workers, and
# one without the entry symbol; made with every test build, sanitized or not.
FAKE_CUDA := $(BUILD)/tests/libfake_cuda.so $(BUILD)/tests/libfake_cuda_noentry.so
$(BUILD)/tests/libfake_cuda.so: tests/fake_cuda.c models/cuda/plugin.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -O1 -g -fPIC -shared -o $@ $< -lm
$(BUILD)/tests/libfake_cuda_noentry.so: tests/fake_cuda.c models/cuda/plugin.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -O1 -g -fPIC -shared -DFAKE_NO_ENTRY -o $@ $< -lm

dinomap: $(BUILD)/dinomap
	@[ "$(BUILD)" = build ] && ln -sf $(BUILD)/dinomap dinomap || true

$(BUILD)/dinomap: $(CLI_OBJ) $(BUILD)/libdinomap.a
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/libdinomap.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/run_tests: $(TEST_OBJ) $(BUILD)/libdinomap.a | $(FAKE_CUDA)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

# linked against the library alone: the library must not need the command line's objects
$(BUILD)/lib_alone: $(BUILD)/tests/lib_alone.o $(BUILD)/libdinomap.a
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bench_vit: $(BUILD)/tests/bench_vit.o $(BUILD)/libdinomap.a
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bench_chm_tiny: $(BUILD)/tests/bench_chm_tiny.o $(BUILD)/libdinomap.a
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bench_chm: $(BUILD)/tests/bench_chm.o $(BUILD)/libdinomap.a
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bench_search: $(BUILD)/tests/bench_search.o $(BUILD)/libdinomap.a
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -MMD -MP -c -o $@ $<

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# --- dependencies -------------------------------------------------------------------------------
check-deps:
	@missing=""; for p in $(PKGS); do pkg-config --exists $$p 2>/dev/null || missing="$$missing $$p"; done; \
	command -v gdal_translate >/dev/null || missing="$$missing gdal-bin"; \
	[ -f /usr/include/oneapi/dnnl/dnnl.h ] || missing="$$missing libdnnl-dev"; \
	/usr/bin/python3 -c "import osgeo.gdal, numpy" 2>/dev/null || missing="$$missing python3-gdal"; \
	/usr/bin/python3 -c "import jsonschema" 2>/dev/null || missing="$$missing python3-jsonschema"; \
	if [ -n "$$missing" ]; then \
	  echo "dinomap: missing libraries:$$missing"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "dinomap: installing Debian packages: $(DEB_PKGS)"; \
	    $(MAKE) --no-print-directory deps || exit 1; \
	  else \
	    echo "dinomap: install them with:"; \
	    echo "  sudo apt-get install -y $(DEB_PKGS)"; exit 1; \
	  fi; \
	fi

deps-if-missing: check-deps

deps:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS)

# --- tests --------------------------------------------------------------------------------------
# One pass with the optimised build, one with AddressSanitizer + UndefinedBehaviorSanitizer.
SHELL := /bin/bash

test: check-deps
	@$(MAKE) --no-print-directory test-plain test-asan 2>&1 | tee $(BUILD)-test.log; \
	rc=$${PIPESTATUS[0]}; sh tests/summary.sh $(BUILD)-test.log; exit $$rc

test-plain: $(BUILD)/run_tests $(BUILD)/dinomap $(BUILD)/lib_alone
	@echo "== tests (optimised build) =="
	@DINOMAP_CACHE_DIR=$(BUILD)/cache DM_BIN=$(BUILD)/dinomap DM_LIB_ALONE=$(BUILD)/lib_alone OPENBLAS_NUM_THREADS=2 ./$(BUILD)/run_tests

test-asan:
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  build-asan/run_tests build-asan/dinomap build-asan/lib_alone
	@echo "== tests (AddressSanitizer + UndefinedBehaviorSanitizer) =="
	@DINOMAP_CACHE_DIR=build-asan/cache DM_SANITIZED=1 DM_BIN=build-asan/dinomap DM_LIB_ALONE=build-asan/lib_alone ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  OPENBLAS_NUM_THREADS=1 ./build-asan/run_tests

# The ViT bench's fp32 part runs again with OpenBLAS's own choice of kernels for this CPU when
# the environment presets others (OPENBLAS_CORETYPE): both settings, like against like.
bench: check-deps
	@$(MAKE) --no-print-directory $(BUILD)/bench_vit
	./$(BUILD)/bench_vit 2 512
	@alt="$$(env -u OPENBLAS_CORETYPE ./$(BUILD)/bench_vit --core)"; \
	if [ -n "$$OPENBLAS_CORETYPE" ] && [ -n "$$alt" ] && [ "$$alt" != "$$OPENBLAS_CORETYPE" ]; then \
	  echo "== fp32 again with the kernels OpenBLAS picks for this CPU ($$alt; the environment presets $$OPENBLAS_CORETYPE) =="; \
	  OPENBLAS_CORETYPE=$$alt ./$(BUILD)/bench_vit 2 512 fp32; fi
	@$(MAKE) --no-print-directory $(BUILD)/dinomap dinomap
	sh tests/bench_features.sh 2
	sh tests/bench_read.sh
	@$(MAKE) --no-print-directory $(BUILD)/bench_chm_tiny $(BUILD)/bench_chm
	./$(BUILD)/bench_chm_tiny 2 512
	./$(BUILD)/bench_chm 2
	@$(MAKE) --no-print-directory bench-search

# The search part alone: a synthetic 1,000,000 × 1024 search file (5.3 GB, in $$TMPDIR or /tmp,
# removed afterwards); BENCH_SEARCH="N D QUERIES DIR" to change it.
bench-search: check-deps
	@$(MAKE) --no-print-directory $(BUILD)/bench_search
	./$(BUILD)/bench_search $(BENCH_SEARCH)

# The main job on the bundled sample: a feature raster of the Landsat scene in samples/.
# DINOMAP_WEIGHTS selects real weights; else a tiny random test checkpoint is used (valid
# rasters, meaningless features).
DEMO_WEIGHTS = $(or $(DINOMAP_WEIGHTS),tests/data/golden/vitl_sat_tiny/backbone.pth)
demo: all
	@if [ -n "$(DINOMAP_WEIGHTS)" ]; then echo "demo: using your weights $(DINOMAP_WEIGHTS)"; \
	 else echo "demo: DINOMAP_WEIGHTS is not set: using the tiny RANDOM test checkpoint $(DEMO_WEIGHTS)"; \
	      echo "      (valid rasters, meaningless features; see README: Getting the weights)"; fi
	./dinomap info $(DEMO_WEIGHTS)
	rm -rf out/demo
	./dinomap features -m $(DEMO_WEIGHTS) --bands 3,2,1 samples/L7_ETMs.tif -o out/demo
	@ls -l out/demo
	@echo "demo: open out/demo/features_pca.tif and out/demo/tiles.gpkg in QGIS"

# --- fuzzing -----------------------------------------------------------------------------------
# libFuzzer targets (tests/fuzz/fuzz_*.c) for the loaders of files a stranger may hand us. Built
# with clang into $(FUZZ_BUILD) (the library and the command line's objects compiled with
# -fsanitize=fuzzer-no-link,address,undefined); `make fuzz` runs each for FUZZ_SECONDS, one at a
# time, on tests/fuzz/seeds/<target>/ and prints execs/s, coverage and crashes
# (tests/fuzz/run.sh). FUZZ_TARGETS picks some. Only these targets need clang.
FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= pth pickle safetensors safetensors_index seghead ini npy tileindex
FUZZ_DEB_PKGS := clang libclang-rt-dev
FUZZ_SAN     := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
# the command line's objects (the INI parser), without main()
FUZZ_CLI_OBJ = $(filter-out $(BUILD)/src/main.o,$(CLI_OBJ))

.PRECIOUS: $(BUILD)/tests/fuzz/%.o
$(BUILD)/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_CLI_OBJ) $(BUILD)/libdinomap.a
	$(CC) -fsanitize=fuzzer -o $@ $^ $(LDLIBS_ALL)

fuzz-check:
	@rt="libclang_rt.fuzzer-$$(uname -m).a"; \
	if ! command -v $(FUZZ_CC) >/dev/null || ! [ -f "$$($(FUZZ_CC) -print-file-name=$$rt)" ]; then \
	  echo "fuzz: needs $(FUZZ_CC) and libFuzzer's runtime ($$rt)"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "fuzz: installing Debian packages: $(FUZZ_DEB_PKGS)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FUZZ_DEB_PKGS) || exit 1; \
	  else \
	    echo "fuzz: install them with:"; \
	    echo "  sudo apt-get install -y $(FUZZ_DEB_PKGS)"; exit 1; \
	  fi; \
	fi

fuzz-build: check-deps fuzz-check
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT="-O1 -fno-omit-frame-pointer" \
	  SIMD= SAN="$(FUZZ_SAN)" CFLAGS="-Wno-unknown-warning-option -Wno-pass-failed" \
	  $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

fuzz: fuzz-build
	@sh tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf build build-asan build-fuzz dinomap build-test.log build-asan-test.log
