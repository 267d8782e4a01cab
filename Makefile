# moda: `make` builds build/libmoda.so; `make cuda` builds build/libmoda_cuda.so (needs nvcc);
# `make test` runs every busted spec under LuaJIT; `make asan test` does the same on a build
# with AddressSanitizer + UndefinedBehaviorSanitizer; `make deps` installs Debian packages.

BUILD    ?= build
CC       ?= cc
NVCC     ?= nvcc
LUAJIT   ?= luajit
BUSTED   ?= busted

# CFLAGS / LDFLAGS from the command line add to (never replace) the flags the build needs.
CFLAGS   ?= -O3 -g
MODA_CFLAGS := -std=gnu11 -fPIC -pthread -Wall -Wextra -Wno-unused-parameter \
            -fno-math-errno -I c -I /usr/include/stb
LDLIBS   += -lopenblas -lm -lpthread
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# `make asan test`: a separate, instrumented build tree.
ifneq ($(filter asan,$(MAKECMDGOALS)),)
BUILD    := build-asan
MODA_CFLAGS += $(SAN_FLAGS) -O1
LDFLAGS  += $(SAN_FLAGS)
TEST_ENV := MODA_LIB=$(abspath $(BUILD))/libmoda.so \
            LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
            ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
endif
# Files listed here are compiled twice: once for baseline x86-64 and once with AVX2+FMA
# (-DMODA_AVX2, object suffix .avx2.o); the code picks the variant at run time.
AVX2_SRCS := c/attn_fast.c

SRCS     := $(wildcard c/*.c)
OBJS     := $(patsubst c/%.c,$(BUILD)/obj/%.o,$(SRCS)) \
            $(patsubst c/%.c,$(BUILD)/obj/%.avx2.o,$(filter $(SRCS),$(AVX2_SRCS)))
HDRS     := $(wildcard c/*.h)

CUDA_SRCS := $(wildcard cuda/*.cu)
CUDA_HDRS := $(wildcard cuda/*.h cuda/*.cuh)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a
NVCCFLAGS += -O3 -std=c++17 -Xcompiler -fPIC -I c -I cuda $(CUDA_ARCH) \
             --expt-relaxed-constexpr -lineinfo --threads 0

LIB      := $(BUILD)/libmoda.so
CUDA_LIB := $(BUILD)/libmoda_cuda.so
CDEF     := lua/moda/cdef.lua
CUDA_CDEF := lua/moda/cuda_cdef.lua

.PHONY: cuda-sass-check all cuda cuda-check test asan deps clean demo bench cdef

all: $(LIB) $(CDEF)

asan: $(LIB)

$(BUILD)/obj/%.o: c/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MODA_CFLAGS) -c $< -o $@

$(BUILD)/obj/%.avx2.o: c/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MODA_CFLAGS) -mavx2 -mfma -mf16c -DMODA_AVX2 -c $< -o $@

$(LIB): $(OBJS)
	$(CC) -shared -Wl,-soname,libmoda.so $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The Lua FFI declarations come from the C headers (one source of truth).
$(CDEF): tools/gen_cdef.lua c/moda.h c/moda_attn.h c/moda_io.h
	$(LUAJIT) tools/gen_cdef.lua c/moda.h c/moda_attn.h c/moda_io.h > $@.tmp && mv $@.tmp $@
cdef: $(CDEF)

$(CUDA_CDEF): tools/gen_cdef.lua cuda/moda_cuda.h
	$(LUAJIT) tools/gen_cdef.lua cuda/moda_cuda.h > $@.tmp && mv $@.tmp $@

cuda: $(CUDA_LIB) $(CUDA_CDEF)

# The standalone kernel checker and compute-sanitizer runs (on a machine with a GPU).
cuda-check: $(CUDA_LIB)
	bash cuda/run_checks.sh full

# A static check of the built code (no GPU needed; tools/sass_rs_check.py): no RS-wgmma A fragment
# may be reached by two kinds of writer (the ptxas 13.0 register fault of session 9), and no memory
# descriptor may sit in an odd uniform register (its cache-hint fault of session 18).
# Needs cuobjdump (CUDA toolkit, or `pip download nvidia-cuda-cuobjdump`); skips, saying so, without it.
CUOBJDUMP ?= $(shell command -v cuobjdump 2>/dev/null || ls $(dir $(shell command -v $(NVCC) 2>/dev/null))cuobjdump 2>/dev/null)
cuda-sass-check: $(CUDA_LIB)
	@if [ -z "$(CUOBJDUMP)" ]; then echo "cuda-sass-check: SKIPPED, cuobjdump not found (set CUOBJDUMP=...)"; \
	else $(CUOBJDUMP) -sass $(CUDA_LIB) > $(BUILD)/libmoda_cuda.sass && \
	  python3 tools/sass_rs_check.py $(BUILD)/libmoda_cuda.sass > $(BUILD)/sass_rs_check.txt; rc=$$?; \
	  grep -c '^OK' $(BUILD)/sass_rs_check.txt | sed 's/^/cuda-sass-check: RS-wgmma kernels OK: /'; \
	  grep '^desc:' $(BUILD)/sass_rs_check.txt | sed 's/^/cuda-sass-check: /'; \
	  grep -A6 SUSPECT $(BUILD)/sass_rs_check.txt; exit $$rc; fi

$(CUDA_LIB): $(CUDA_SRCS) $(CUDA_HDRS) $(LIB)
	@command -v $(NVCC) >/dev/null || { echo "make cuda: nvcc not found on PATH"; exit 1; }
	$(NVCC) $(NVCCFLAGS) -shared -o $@ $(CUDA_SRCS) -L$(BUILD) -lmoda -Xlinker -rpath,'$$ORIGIN' -lcudart

test: $(LIB) $(CDEF)
	$(TEST_ENV) $(BUSTED) --lua=$(LUAJIT) -o spec/support/summary_handler.lua spec/

bench: $(LIB)
	$(LUAJIT) bench/cpu_attention.lua

demo: $(LIB)
	$(LUAJIT) examples/repl_demo.lua

deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  build-essential luajit lua-busted luarocks libopenblas-dev libstb-dev libpng-dev python3

clean:
	rm -rf build build-asan

# `luarocks make` (moda-scm-1.rockspec) and `make install` put the Lua modules in LUADIR and the
# libraries in LIBDIR/moda/, where lua/moda/ffi.lua finds them through package.cpath.
PREFIX ?= /usr/local
LUADIR ?= $(PREFIX)/share/lua/5.1
LIBDIR ?= $(PREFIX)/lib/lua/5.1
install: all
	install -d $(DESTDIR)$(LUADIR)/moda $(DESTDIR)$(LIBDIR)/moda
	install -m 644 lua/moda/*.lua $(DESTDIR)$(LUADIR)/moda/
	install -m 755 $(LIB) $(DESTDIR)$(LIBDIR)/moda/libmoda.so
	if [ -f $(CUDA_LIB) ]; then install -m 755 $(CUDA_LIB) $(DESTDIR)$(LIBDIR)/moda/libmoda_cuda.so; fi
.PHONY: install
