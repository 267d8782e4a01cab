-- CPU MoDA attention: the fast path against the float64-loop reference, with OpenBLAS sgemm on
-- the same cores as the ceiling.  Run from anywhere:  luajit bench/cpu_attention.lua
--
-- FLOP convention: a visible (query, key) pair costs 4*d in the forward (q.k and p*v, 2*d
-- each), depth pairs included; the backward counts 2.5x that, 10*d per pair (recomputed q.k,
-- do.v, dv, dk, dq), the FlashAttention convention. Masked pairs are not counted.
local script_dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = script_dir .. "/.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path

local ffi = require("ffi")
local moda = require("moda")

ffi.cdef [[
typedef struct moda_bench_timespec { long tv_sec; long tv_nsec; } moda_bench_timespec;
int clock_gettime(int clk, moda_bench_timespec *ts);
]]
local ts = ffi.new("moda_bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)   -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- Median wall time of fn over n runs (after one warm-up run when warm is true), in ms.
local function time_ms(n, fn, warm)
  if warm then fn() end
  local times = {}
  for i = 1, n do
    local t0 = now()
    fn()
    times[i] = (now() - t0) * 1e3
  end
  table.sort(times)
  return times[math.floor((n + 1) / 2)]
end

-- Visible (query, key) pairs of a shape, depth rows included (SPEC section 1).
local function visible_pairs(c)
  local C = c.depth == "chunk" and c.chunk or 1
  local n = 0
  for t = 0, c.T - 1 do
    local seq = c.causal and (c.S - c.T + t + 1) or c.S
    local ulo = math.floor(t / C) * C
    local uhi = c.causal and t + 1 or math.min(c.T, ulo + C)
    n = n + seq + (uhi - ulo) * c.L
  end
  return n * c.B * c.Hq
end

local function make_inputs(c, T)
  local S = c.S - c.T + T
  local x = {
    q = moda.randn({ c.B, T, c.Hq, c.d }), k = moda.randn({ c.B, S, c.Hk, c.d }),
    v = moda.randn({ c.B, S, c.Hk, c.d }), dout = moda.randn({ c.B, T, c.Hq, c.d }),
  }
  if c.L > 0 then
    x.kd, x.vd = moda.randn({ c.B, T, c.L, c.Hk, c.d }), moda.randn({ c.B, T, c.L, c.Hk, c.d })
  end
  return x
end

local function measure(c, x, impl, nf, nb)
  local opts = { mask = c.causal and "causal" or "full", depth = c.depth, chunk = c.chunk, impl = impl }
  local o, lse = moda.attention(x.q, x.k, x.v, x.kd, x.vd, opts)
  local warm = impl == "fast"
  local fwd = time_ms(nf, function() moda.attention(x.q, x.k, x.v, x.kd, x.vd, opts) end, warm)
  local bwd = time_ms(nb, function()
    moda.attention_backward(x.dout, x.q, x.k, x.v, x.kd, x.vd, o, lse, opts)
  end, warm)
  return fwd, bwd
end

local function sgemm_gflops()
  local n = 2048
  local a, b = moda.randn({ n, n }), moda.randn({ n, n })
  local ms = time_ms(5, function() a:matmul(b) end, true)
  return 2 * n ^ 3 / (ms * 1e6)
end

local shapes = {
  { name = "LM, token depth", B = 1, T = 2048, S = 2048, Hq = 8, Hk = 2, d = 64, L = 8,
    causal = true, depth = "token", ref_T = 512 },
  { name = "LM, chunk depth C=64", B = 1, T = 2048, S = 2048, Hq = 8, Hk = 2, d = 64, L = 8,
    causal = true, depth = "chunk", chunk = 64, ref_T = 512 },
  { name = "decode-ish, S > T", B = 4, T = 128, S = 1024, Hq = 8, Hk = 2, d = 64, L = 8,
    causal = true, depth = "token", ref_T = 32 },
  { name = "vision (DeiT-S), full", B = 8, T = 197, S = 197, Hq = 6, Hk = 1, d = 64, L = 22,
    causal = false, depth = "token" },
  { name = "vision, full, chunk C=14", B = 8, T = 197, S = 197, Hq = 6, Hk = 1, d = 64, L = 22,
    causal = false, depth = "chunk", chunk = 14 },
}

moda.manual_seed(1)
local threads = moda.get_num_threads()
local peak = sgemm_gflops()
print(string.format("moda CPU attention, float32, %d thread(s)", threads))
print(string.format("OpenBLAS sgemm 2048^3 on the same threads: %.1f GFLOP/s (the ceiling)", peak))
print("FLOPs: 4*d per visible (query, key) pair, depth pairs included, forward; 10*d backward.")
print("Reference: float64 loops, one thread; where ref_T is given it is timed at that T (S - T")
print("kept) and scaled to the full shape by the ratio of visible pairs (marked *).")
print()
local hdr = string.format("%-26s %-36s %-4s %9s %8s %9s %8s %6s %7s", "shape", "B,T,S,Hq,Hk,d,L", "pass",
                          "fast ms", "GFLOP/s", "ref ms", "speedup", "%sgemm", "threads")
print(hdr)
print(string.rep("-", #hdr))
for _, c in ipairs(shapes) do
  local x = make_inputs(c, c.T)
  local pairs_ = visible_pairs(c)
  local ff, fb = measure(c, x, "fast", 5, 3)
  local rc, scaled = c, ""
  if c.ref_T then
    rc = {}
    for k, v in pairs(c) do rc[k] = v end
    rc.T, rc.S = c.ref_T, c.S - c.T + c.ref_T
    scaled = "*"
  end
  local rx = rc == c and x or make_inputs(c, rc.T)
  local rf, rb = measure(rc, rx, "reference", 1, 1)
  local ratio = pairs_ / visible_pairs(rc)
  rf, rb = rf * ratio, rb * ratio
  local dims = string.format("%d,%d,%d,%d,%d,%d,%d %s", c.B, c.T, c.S, c.Hq, c.Hk, c.d, c.L,
                             c.causal and "causal" or "full")
  for _, row in ipairs({ { "fwd", ff, rf, 4 }, { "bwd", fb, rb, 10 } }) do
    local gf = pairs_ * row[4] * c.d / (row[2] * 1e6)
    print(string.format("%-26s %-36s %-4s %9.1f %8.1f %8.0f%s %7.0fx %5.0f%% %7d", c.name, dims, row[1],
                        row[2], gf, row[3], scaled, row[3] / row[2], 100 * gf / peak, threads))
  end
end
