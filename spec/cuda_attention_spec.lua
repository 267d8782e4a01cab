-- CUDA MoDA attention against the float64 CPU reference (shared/moda/SPEC.md sections 1, 2, 5).
-- Skips, saying why, where moda.cuda.available() is false (CI: nvcc but no GPU).
-- Each case: fresh random inputs (rounded to the dtype, the reference reads the same rounded
-- values in float64), depth read from a [B,T,L+2,Hk,d] buffer through a narrow view (strided),
-- GPU outputs poisoned with NaN first, error = max|out-ref| / max|ref| per tensor, NaN fails.
-- MODA_CUDA_SPEC_TABLE=1 prints one line per case.
local moda = require("moda")

local unpack_ = table.unpack or unpack
local TOL = { float32 = 1e-5, float16 = 1e-2, bfloat16 = 1e-2 }
local print_table = os.getenv("MODA_CUDA_SPEC_TABLE") == "1"

-- { B, T, S, Hk, G, L, d, mask, depth, chunk, dtype, backward [, deterministic (default true)] }
-- Every backward case runs twice on the same inputs (fresh poisoned outputs) and requires
-- bit-identical gradients, with deterministic on and off (dq excepted where the atomic-dQ path ran).
local CASES = {}
local function add(c) CASES[#CASES + 1] = c end
for _, dt in ipairs({ "bfloat16", "float16", "float32" }) do
  for _, d in ipairs({ 64, 128 }) do
    add({ 1, 1, 1, 1, 1, 0, d, "causal", "token", 64, dt, true })
    add({ 2, 37, 37, 2, 4, 5, d, "causal", "token", 64, dt, true })
    add({ 1, 97, 104, 1, 8, 1, d, "causal", "token", 64, dt, true })      -- S > T (KV cache)
    add({ 1, 131, 131, 2, 2, 64, d, "full", "token", 64, dt, true })
    add({ 1, 70, 70, 1, 16, 5, d, "causal", "chunk", 16, dt, true })
    add({ 1, 53, 60, 2, 1, 1, d, "full", "chunk", 8, dt, true })
  end
  add({ 1, 211, 211, 1, 16, 64, 64, "causal", "chunk", 64, dt, true })
  add({ 1, 200, 211, 1, 5, 5, 64, "causal", "token", 64, dt, true, false })  -- odd G, S > T
  add({ 2, 128, 133, 2, 2, 0, 128, "causal", "token", 64, dt, true })      -- L = 0: plain attention
end
-- head dims off the tensor-core kernels' 64 and 128 (the SIMT kernels take them, 1..256): 32, 256,
-- 40 and 96 (rows of 80 and 192 bytes), 1; forward and backward, both masks, chunk depth, S > T
add({ 2, 37, 37, 2, 4, 5, 32, "causal", "token", 64, "bfloat16", true })
add({ 1, 29, 33, 1, 4, 3, 256, "causal", "chunk", 8, "float16", true })
add({ 1, 41, 41, 2, 2, 5, 256, "full", "token", 64, "float32", true })
add({ 1, 23, 23, 2, 1, 1, 40, "causal", "token", 64, "bfloat16", true })
add({ 1, 17, 17, 1, 3, 2, 1, "full", "chunk", 4, "float32", true })
add({ 1, 3, 1500, 1, 4, 2, 96, "causal", "token", 64, "bfloat16", false })  -- a decode shape the split-K path does not take
-- Backward grid for the tensor-core backward (bf16/fp16, d 64/128): T incl. primes up to 997,
-- G 1..16, L 0/1/5/64, both masks, token and chunk depth (C 4/16/64), S > T, deterministic on
-- and off. G is halved until the float64 reference's work B*T*Hq*(S + visible depth) <= 3e6.
do
  local Ts = { 1, 2, 17, 64, 127, 251, 509, 997 }
  local Gs = { 1, 2, 4, 8, 16 }
  local Ls = { 0, 1, 5, 64 }
  local Cs = { 4, 16, 64 }
  for i = 0, 31 do
    local mask = i % 2 == 1 and "causal" or "full"
    local depth = math.floor(i / 2) % 2 == 1 and "chunk" or "token"
    local chunk = Cs[math.floor(i / 8) % 3 + 1]
    local L = Ls[math.floor(i / 4) % 4 + 1]
    local T = Ts[(i * 5 + 1 + math.floor(i / 16)) % 8 + 1]
    local G = Gs[(i * 3 + math.floor(i / 16)) % 5 + 1]
    local d = math.floor(i / 3) % 2 == 1 and 128 or 64
    local dt = math.floor(i / 5) % 2 == 1 and "float16" or "bfloat16"
    local S = i % 3 == 0 and T + 29 or T
    local Hk = T <= 64 and 2 or 1
    local B = T <= 64 and 2 or 1
    while G > 1 do
      local vis = depth == "chunk" and chunk * L or L
      if B * T * G * Hk * (S + vis) <= 3e6 then break end
      G = math.floor(G / 2)
    end
    add({ B, T, S, Hk, G, L, d, mask, depth, chunk, dt, true, math.floor(i / 7) % 2 == 1 })
  end
end
-- a deterministic backward long enough (>= 1024 visible keys per query, >= 16 L) for the rules
-- that pick kernels by sequence length (session 9: the depth kernel there too)
add({ 1, 2100, 2100, 1, 1, 1, 64, "causal", "token", 64, "bfloat16", true, true })
-- deterministic = false, as long (>= 1024 mean visible keys): the split backward (session 22: the
-- dK/dV kernel without dQ, then the warp-specialised dQ kernel; no atomics, so dq is bit-identical too)
add({ 1, 2100, 2100, 1, 2, 5, 64, "causal", "token", 64, "bfloat16", true, false })
-- where the rule runs the depth kernel beside the sequence kernels on its own SMs (session 10:
-- T >= 1024, their estimated times balanced; name "..._dtok_conc"): with the dQ kernel
-- (G = 1, nondeterministic and deterministic) and with the atomic dQ (G = 2)
add({ 1, 1100, 1100, 1, 1, 16, 64, "causal", "token", 64, "bfloat16", true, false })
add({ 1, 1100, 1100, 1, 1, 16, 64, "causal", "token", 64, "float16", true, true })
add({ 1, 1100, 1100, 1, 2, 16, 64, "causal", "token", 64, "bfloat16", true, false })
-- larger T (forward only: the float64 reference backward is slow on the CPU)
add({ 1, 1000, 1000, 1, 8, 64, 64, "causal", "token", 64, "bfloat16", false })
add({ 1, 997, 997, 2, 4, 5, 128, "full", "chunk", 64, "float16", false })
add({ 1, 523, 600, 1, 16, 1, 64, "causal", "token", 64, "float32", false })
add({ 1, 389, 389, 4, 2, 64, 128, "full", "token", 64, "bfloat16", false })
-- long enough for the default choice of the sm_90a wgmma kernels at d = 128 (>= 1024 visible keys
-- per query; session 9 found fwd_wgmma_kernel<T, 128> wrong after its first K/V block, a shape
-- no case here reached)
add({ 1, 1100, 1100, 1, 2, 5, 128, "full", "token", 64, "bfloat16", false })
add({ 1, 2100, 2100, 1, 1, 1, 128, "causal", "token", 64, "float16", false })
-- decoding: T <= 16 new queries against S >= 1024 cached keys take the split-K decode path
add({ 1, 1, 1024, 2, 4, 64, 64, "causal", "token", 64, "bfloat16", false })
add({ 2, 3, 5000, 1, 8, 5, 128, "causal", "token", 64, "float16", false })
add({ 1, 16, 1100, 1, 16, 64, 64, "causal", "chunk", 64, "float32", false })
add({ 1, 16, 70000, 1, 1, 0, 64, "causal", "token", 64, "bfloat16", false })
add({ 1, 3, 2000, 2, 2, 3, 128, "full", "chunk", 2, "bfloat16", false })

local function rel_err(got, ref)
  got = got:to("cpu"):to("float64")
  if got:count_nan() > 0 then return math.huge end
  local r = ref:to("float64"):absmax()
  local diff = (got - ref:to("float64")):absmax()
  if diff ~= diff then return math.huge end
  return r > 0 and diff / r or diff
end

-- lse is a logarithm: absolute error (the relative error of the softmax normaliser), judged
-- against max(1, max|ref|) so a value near 0 does not inflate it.
local function lse_err(got, ref)
  got = got:to("cpu"):to("float64")
  if got:count_nan() > 0 then return math.huge end
  local diff = (got - ref:to("float64")):absmax()
  if diff ~= diff then return math.huge end
  return diff / math.max(1, ref:to("float64"):absmax())
end

local function poisoned_like(t, dtype)
  return moda.empty(t:shape(), { dtype = dtype or t.dtype, device = "cuda" }):fill(0 / 0)
end

-- Random tensor rounded to dtype: returns the cuda copy and a float64 cpu copy of the same values.
local function rand_pair(shape, dtype)
  local host = moda.randn(shape, { dtype = "float32" }):to(dtype)
  return host:to("cuda"), host:to("float64")
end

local function case_name(c)
  return string.format("%s B=%d T=%d S=%d Hk=%d G=%d L=%d d=%d %s depth=%s%s%s", c[11], c[1], c[2], c[3],
    c[4], c[5], c[6], c[7], c[8], c[9], c[9] == "chunk" and ("(" .. c[10] .. ")") or "",
    c[12] and c[13] == false and " nondet" or "")
end

local fwd_kernel, bwd_kernel  -- the kernels of the case run_case ran last (for the table)

local function run_case(c)
  local B, T, S, Hk, G, L, d, mask, depth, chunk, dtype, backward, deterministic = unpack_(c)
  if deterministic == nil then deterministic = true end
  local Hq = G * Hk
  local q, q64 = rand_pair({ B, T, Hq, d }, dtype)
  local k, k64 = rand_pair({ B, S, Hk, d }, dtype)
  local v, v64 = rand_pair({ B, S, Hk, d }, dtype)
  local kd, kd64, vd, vd64
  if L > 0 then
    local kbuf, kbuf64 = rand_pair({ B, T, L + 2, Hk, d }, dtype)
    local vbuf, vbuf64 = rand_pair({ B, T, L + 2, Hk, d }, dtype)
    kd, kd64 = kbuf:narrow(3, 1, L), kbuf64:narrow(3, 1, L)
    vd, vd64 = vbuf:narrow(3, 1, L), vbuf64:narrow(3, 1, L)
  end
  local opts_ref = { mask = mask, depth = depth, chunk = chunk, impl = "reference" }
  local o_ref, lse_ref = moda.attention(q64, k64, v64, kd64, vd64, opts_ref)
  local out = { o = poisoned_like(q), lse = moda.empty({ B, Hq, T }, { dtype = "float32", device = "cuda" }):fill(0 / 0) }
  local o, lse = moda.attention(q, k, v, kd, vd, { mask = mask, depth = depth, chunk = chunk, out = out })
  fwd_kernel = moda.attention_kernels(q, k, v, kd, vd, { mask = mask, depth = depth, chunk = chunk })
  bwd_kernel = "-"
  assert.equal("cuda", o.device)
  local errs = { o = rel_err(o, o_ref), lse = lse_err(lse, lse_ref) }
  if backward then
    local dout, dout64 = rand_pair({ B, T, Hq, d }, dtype)
    local r = { moda.attention_backward(dout64, q64, k64, v64, kd64, vd64, o_ref, lse_ref, opts_ref) }
    local function run_bwd()
      local gout = { dq = poisoned_like(q), dk = poisoned_like(k), dv = poisoned_like(v) }
      if L > 0 then gout.dkd, gout.dvd = poisoned_like(kd), poisoned_like(vd) end
      return { moda.attention_backward(dout, q, k, v, kd, vd, o, lse,
        { mask = mask, depth = depth, chunk = chunk, out = gout, deterministic = deterministic }) }
    end
    local g, g2 = run_bwd(), run_bwd()
    local _, bwd_name = moda.attention_kernels(q, k, v, kd, vd,
      { mask = mask, depth = depth, chunk = chunk, deterministic = deterministic })
    bwd_kernel = bwd_name
    assert.is_false(deterministic and bwd_kernel:find("atomic", 1, true) ~= nil, "atomics with deterministic = true")
    errs.repro = 0
    for i, name in ipairs({ "dq", "dk", "dv", "dkd", "dvd" }) do
      if r[i] ~= nil then
        if S == 1 and L == 0 and (name == "dq" or name == "dk") then
          -- one key per query: the softmax is the constant 1, dq and dk are exactly zero and any
          -- value is rounding noise; judge it against the size of its terms, scale*d*|dO||v||k|
          local g64 = g[i]:to("cpu"):to("float64")
          local terms = math.sqrt(d) * dout64:absmax() * v64:absmax() * k64:absmax()
          errs[name] = g64:count_nan() > 0 and math.huge or g64:absmax() / terms
        else
          errs[name] = rel_err(g[i], r[i])
        end
        -- bits must not differ; except dq where the atomic-dQ path ran (deterministic = false on
        -- sm_90; it sums in float32 in a varying order): there the second run's dq must match
        -- the reference too
        local varies = name == "dq" and bwd_kernel:find("atomic", 1, true) ~= nil
        if varies then
          if not (S == 1 and L == 0) then errs[name] = math.max(errs[name], rel_err(g2[i], r[i])) end
        elseif not g[i]:to("cpu"):equal(g2[i]:to("cpu")) then
          errs.repro = math.huge
        end
      end
    end
  end
  moda.cuda.synchronize()
  return errs
end

describe("moda.attention on CUDA", function()
  if not moda.cuda.available() then
    it("is skipped", function()
      pending("no GPU: " .. tostring(moda.cuda.reason()))
    end)
    return
  end

  local info = moda.cuda.device_info()
  if print_table then
    io.write(string.format("\n[cuda spec] %s (sm_%d), %d cases\n", info.name, info.cc, #CASES))
    io.write(string.format("%-62s %9s %9s %9s %9s %9s %9s %9s  %s\n", "case", "o", "lse", "dq", "dk", "dv", "dkd",
      "dvd", "kernels (fwd / bwd)"))
  end

  for _, c in ipairs(CASES) do
    it("matches the float64 reference: " .. case_name(c), function()
      local errs = run_case(c)
      local tol = TOL[c[11]]
      if print_table then
        local function f(x) return x and string.format("%9.2e", x) or string.format("%9s", "-") end
        io.write(string.format("%-62s %s %s %s %s %s %s %s  %s / %s\n", case_name(c), f(errs.o), f(errs.lse),
          f(errs.dq), f(errs.dk), f(errs.dv), f(errs.dkd), f(errs.dvd), fwd_kernel, bwd_kernel))
        io.flush()
      end
      for name, e in pairs(errs) do
        assert.is_true(e < tol, string.format("%s: error %.3e >= %.0e", name, e, tol))
      end
    end)
  end

  -- The backward's flow rules (bwd_atomic_dq_selected in cuda/attn_bwd_mma.cu) on sm_90, where the
  -- benchmarks chose them: with deterministic = false the dK/dV kernel sums dQ by atomics at the
  -- DeiT shape (197 keys), while long causal sequences take the split flow (dK/dV without dQ, then
  -- the dQ kernel). Session 22 once sent DeiT to the split flow, 5% slower, without a test noticing.
  it("picks the measured backward flows on sm_90 (atomic dQ at DeiT, the split at long sequences)", function()
    local ffi = require("ffi")
    pcall(ffi.cdef, "extern char **environ;")
    for i = 0, math.huge do  -- a backward or wgmma switch in the environment changes the rules
      local e = ffi.C.environ[i]
      if e == nil then break end
      local name = ffi.string(e):match("^(MODA_CUDA_[%w_]*)=")
      if name and (name:find("^MODA_CUDA_BWD_") or name:find("^MODA_CUDA_WGMMA")) then
        return pending("rules switched by " .. name)
      end
    end
    if info.cc ~= 90 then return pending("the rules are sm_90's; this GPU is sm_" .. info.cc) end
    local function bwd_name(B, T, Hk, G, L, mask)
      local bf = { dtype = "bfloat16", device = "cuda" }
      local q = moda.empty({ B, T, Hk * G, 64 }, bf)
      local k, v = moda.empty({ B, T, Hk, 64 }, bf), moda.empty({ B, T, Hk, 64 }, bf)
      local kd, vd = moda.empty({ B, T, L, Hk, 64 }, bf), moda.empty({ B, T, L, Hk, 64 }, bf)
      local _, name = moda.attention_kernels(q, k, v, kd, vd, { mask = mask, deterministic = false })
      return name
    end
    local deit = bwd_name(2, 197, 1, 4, 22, "full")
    assert.truthy(deit:find("ws_atomic_dq", 1, true), "DeiT-Tiny shape: " .. deit)
    local long = bwd_name(1, 4096, 1, 8, 64, "causal")
    assert.falsy(long:find("atomic", 1, true), "causal T=4096: " .. long)
    assert.truthy(long:find("_ws_", 1, true), "causal T=4096: " .. long)
  end)

  it("moves tensors to the GPU and back with strides and dtype conversion", function()
    local x = moda.randn({ 3, 5, 7 }, { dtype = "float64" })
    local xt = x:transpose(1, 3)                       -- strided source
    local g = xt:to("cuda")
    assert.equal("cuda", g.device)
    assert.is_true(g:to("cpu"):equal(xt))
    local gb = g:to("bfloat16")                        -- converting copy on the device
    assert.is_true(gb:to("cpu"):equal(xt:to("bfloat16")))
    local gs = moda.empty({ 7, 5, 3 }, { dtype = "float32", device = "cuda" }):fill(2.5)
    assert.equal(2.5 * 105, gs:to("cpu"):sum())
    local gi = g:to("int32"):to("cpu")
    assert.is_true(gi:equal(xt:to("int32")))
  end)

  it("runs examples/cuda_attention.lua, the GPU tour, within the bf16 tolerance", function()
    -- (dofile runs the tour in _G: its print is _G.print; its output is kept for the messages)
    local lines, print_ = {}, _G.print
    _G.print = function(...) lines[#lines + 1] = table.concat({ ... }, "\t") end
    local ok, res = pcall(dofile, "examples/cuda_attention.lua")
    _G.print = print_
    local said = table.concat(lines, "\n")
    assert.is_true(ok, tostring(res) .. "\n" .. said)
    assert.is_table(res, said)
    assert.falsy(res.kernels[1]:find("^cpu") or res.kernels[2]:find("^cpu"), said)
    for _, name in ipairs({ "o", "lse", "dq", "dk", "dv", "dkd", "dvd" }) do
      local e = res.errors[name]
      assert.is_true(e == e and e < TOL.bfloat16, name .. ": " .. tostring(e) .. "\n" .. said)
    end
  end)

  it("answers random calls (GPU tensors, some on the CPU) with named errors or finite outputs", function()
    local fuzz = require("support.attention_fuzz")
    local seed = os.time() % 100000
    local stats = {}
    local bad = fuzz.run(moda, { calls = 300, seed = seed, stats = stats, devices = { "cuda", "cuda", "cpu" } })
    assert.is_nil(bad, bad)
    assert.is_true(stats.fwd_ok > 20 and stats.bwd_ok > 10, string.format("seed %d: %d forwards, %d backwards ran",
      seed, stats.fwd_ok, stats.bwd_ok))
  end)

  it("reports device count and raises Lua errors for bad inputs", function()
    assert.is_true(moda.cuda.device_count() >= 1)
    local q = moda.randn({ 1, 4, 2, 64 }, { dtype = "bfloat16" }):to("cuda")
    local k = moda.randn({ 1, 4, 1, 64 }, { dtype = "bfloat16" }):to("cuda")
    local kc = moda.randn({ 1, 4, 1, 64 }, { dtype = "bfloat16" })     -- on the cpu
    assert.has_error(function() moda.attention(q, kc, k) end)
    local k32 = moda.randn({ 1, 4, 1, 32 }, { dtype = "bfloat16" }):to("cuda")
    assert.has_error(function() moda.attention(q, k32, k32) end)
    -- a head dim past what any CUDA kernel takes (1..256): a Lua error that says so, not a launch failure
    local q300 = moda.randn({ 1, 4, 2, 300 }, { dtype = "bfloat16" }):to("cuda")
    local k300 = moda.randn({ 1, 4, 1, 300 }, { dtype = "bfloat16" }):to("cuda")
    local ok, err = pcall(moda.attention, q300, k300, k300)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("head dim 300", 1, true), tostring(err))
    moda.cuda.synchronize()
  end)
end)
