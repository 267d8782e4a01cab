-- MoDA attention (shared/moda/SPEC.md): the float64 reference against finite differences and
-- an independent plain-attention oracle, then the fast CPU path against the reference over a
-- randomised grid of shapes, masks and depth visibilities, in float64 and float32.
-- Every run draws a fresh seed; failures print it (MODA_SEED=<n> reruns that draw).
local moda = require("moda")

local SEED = tonumber(os.getenv("MODA_SEED")) or (os.time() % 1000000) * 1000 + math.floor(os.clock() * 1000) % 1000

local function reseed(k)
  moda.manual_seed(SEED + k)
  math.randomseed(SEED + k)
end

local function randn(shape, dtype) return moda.randn(shape, { dtype = dtype or "float64" }) end

local function nan_like(t, dtype)
  return moda.full(t:shape(), 0 / 0, { dtype = dtype or t.dtype, device = t.device })
end

-- max|a-b| / max|b| and ||a-b|| / ||b||, in float64; NaN anywhere is an error of +inf.
local function errors(a, b)
  a, b = a:to("float64"), b:to("float64")
  if a:count_nan() > 0 or b:count_nan() > 0 then return math.huge, math.huge end
  local diff = a - b
  local mx, nrm = b:abs():max(), b:norm()
  if mx == 0 then return diff:abs():max(), diff:norm() end
  return diff:abs():max() / mx, diff:norm() / nrm
end

local function describe_case(c)
  return string.format("seed=%d B=%d T=%d S=%d Hq=%d Hk=%d d=%d L=%d mask=%s depth=%s chunk=%s dtype=%s",
                       SEED, c.B, c.T, c.S, c.Hk * c.G, c.Hk, c.d, c.L, c.mask, c.depth,
                       tostring(c.chunk), c.dtype or "float64")
end

-- lse is a logarithm: its absolute error is the relative error of the softmax normaliser, so it
-- is judged against max(1, |ref|) (a plain relative error blows up where the lse crosses 0,
-- e.g. one key whose score cancels to ~0.01).
local function lse_errors(a, b)
  a, b = a:to("float64"), b:to("float64")
  if a:count_nan() > 0 or b:count_nan() > 0 then return math.huge, math.huge end
  local diff = a - b
  local n = b:numel()
  return diff:abs():max() / math.max(1, b:abs():max()), diff:norm() / math.max(math.sqrt(n), b:norm())
end

local function assert_close(got, want, tol, what, errfn)
  local emax, efro = (errfn or errors)(got, want)
  assert(emax < tol and efro < tol,
         string.format("%s: max rel err %.3g, frobenius rel err %.3g (tol %.1g)", what, emax, efro, tol))
end

-- Random inputs of one case (depth tensors nil when L = 0).
local function inputs(c, dtype)
  local x = {}
  x.q = randn({ c.B, c.T, c.Hk * c.G, c.d }, dtype)
  x.k = randn({ c.B, c.S, c.Hk, c.d }, dtype)
  x.v = randn({ c.B, c.S, c.Hk, c.d }, dtype)
  if c.L > 0 then
    x.kd = randn({ c.B, c.T, c.L, c.Hk, c.d }, dtype)
    x.vd = randn({ c.B, c.T, c.L, c.Hk, c.d }, dtype)
  end
  x.dout = randn({ c.B, c.T, c.Hk * c.G, c.d }, dtype)
  return x
end

local function opts_of(c, impl, out)
  return { mask = c.mask, depth = c.depth, chunk = c.chunk, impl = impl, out = out }
end

-- Forward and backward of one implementation, into NaN-poisoned output buffers.
local function run(x, c, impl)
  local o = nan_like(x.q)
  local lse = moda.full({ c.B, c.Hk * c.G, c.T }, 0 / 0, { dtype = "float32" })
  o, lse = moda.attention(x.q, x.k, x.v, x.kd, x.vd, opts_of(c, impl, { o = o, lse = lse }))
  local out = { dq = nan_like(x.q), dk = nan_like(x.k), dv = nan_like(x.v) }
  if x.kd then out.dkd, out.dvd = nan_like(x.kd), nan_like(x.vd) end
  local dq, dk, dv, dkd, dvd = moda.attention_backward(x.dout, x.q, x.k, x.v, x.kd, x.vd, o, lse,
                                                       opts_of(c, impl, out))
  return { o = o, lse = lse, dq = dq, dk = dk, dv = dv, dkd = dkd, dvd = dvd }
end

local function to64(x)
  local y = {}
  for k, t in pairs(x) do y[k] = t:to("float64") end
  return y
end

-- With L = 0 and S = 1 every query sees exactly one key: its softmax is the constant 1, so dq and
-- dk are exactly zero and both implementations return rounding noise, which a relative error
-- cannot judge. There they must be small against the size of their terms, scale * d * |dO||v||k|.
local function single_key_grad_ok(got, c, x, tol)
  local bound = tol * c.d / math.sqrt(c.d) * x.dout:abs():max() * x.v:abs():max() * x.k:abs():max()
  for _, name in ipairs({ "dq", "dk" }) do
    local m = got[name]:to("float64"):abs():max()
    assert(m <= bound, string.format("%s: %s must be ~0 with one key per query, max |%s| = %.3g > %.3g",
                                     describe_case(c), name, name, m, bound))
  end
end

local function compare(got, want, tol, c, x)
  local single_key = c.L == 0 and c.S == 1 and x ~= nil
  if single_key then single_key_grad_ok(got, c, x, tol) end
  for _, name in ipairs({ "o", "lse", "dq", "dk", "dv", "dkd", "dvd" }) do
    if want[name] and not (single_key and (name == "dq" or name == "dk")) then
      -- lse is float32 in both: its own tolerance is float32 rounding
      assert_close(got[name], want[name], name == "lse" and math.max(tol, 1e-6) or tol,
                   describe_case(c) .. ": " .. name, name == "lse" and lse_errors or nil)
    end
  end
end

describe("reference attention", function()
  -- loss = <o, w>; its gradient with respect to every input element by central differences.
  local function fd_check(c)
    reseed(1)
    local x = inputs(c, "float64")
    local opts = opts_of(c, "reference")
    local o = moda.attention(x.q, x.k, x.v, x.kd, x.vd, opts)
    local w = x.dout
    local function loss()
      local out = moda.attention(x.q, x.k, x.v, x.kd, x.vd, opts)
      local po, pw, s = out:data(), w:data(), 0
      for i = 0, out:numel() - 1 do s = s + po[i] * pw[i] end
      return s
    end
    local grads = { moda.attention_backward(w, x.q, x.k, x.v, x.kd, x.vd, o,
                    select(2, moda.attention(x.q, x.k, x.v, x.kd, x.vd, opts)), opts) }
    local names = { "q", "k", "v", "kd", "vd" }
    local h = 1e-5
    for i, name in ipairs(names) do
      local t, g = x[name], grads[i]
      if t then
        local pt, pg = t:data(), g:data()
        local worst = 0
        for e = 0, t:numel() - 1 do
          local keep = pt[e]
          pt[e] = keep + h; local fp = loss()
          pt[e] = keep - h; local fm = loss()
          pt[e] = keep
          local fd = (fp - fm) / (2 * h)
          worst = math.max(worst, math.abs(fd - pg[e]) / (1 + math.abs(fd)))
        end
        assert(worst < 1e-7, string.format("%s: d%s differs from finite differences by %.3g",
                                           describe_case(c), name, worst))
      else
        assert.is_nil(g)
      end
    end
  end

  local fd_cases = {
    { B = 1, T = 4, S = 4, Hk = 1, G = 1, d = 3, L = 0, mask = "causal", depth = "token" },
    { B = 2, T = 4, S = 6, Hk = 2, G = 2, d = 3, L = 2, mask = "causal", depth = "token" },
    { B = 1, T = 5, S = 3, Hk = 1, G = 3, d = 2, L = 1, mask = "full", depth = "token" },
    { B = 1, T = 5, S = 7, Hk = 2, G = 2, d = 3, L = 2, mask = "causal", depth = "chunk", chunk = 2 },
    { B = 1, T = 5, S = 5, Hk = 1, G = 2, d = 2, L = 3, mask = "full", depth = "chunk", chunk = 3 },
  }
  for _, c in ipairs(fd_cases) do
    it("has gradients equal to finite differences: " .. describe_case(c):gsub("seed=%d+ ", ""), function()
      fd_check(c)
    end)
  end

  -- Plain softmax attention, written out with Lua loops on float64 data.
  local function plain_attention(q, k, v, causal)
    local B, T, Hq, d = q:size(1), q:size(2), q:size(3), q:size(4)
    local S, Hk = k:size(2), k:size(3)
    local G, scale = Hq / Hk, 1 / math.sqrt(d)
    local out = moda.zeros({ B, T, Hq, d }, { dtype = "float64" })
    local pq, pk, pv, po = q:data(), k:data(), v:data(), out:data()
    for b = 0, B - 1 do
      for t = 0, T - 1 do
        for h = 0, Hq - 1 do
          local g = math.floor(h / G)
          local last = causal and (S - T + t) or (S - 1)
          local s, m = {}, -math.huge
          for j = 0, last do
            local acc = 0
            for c = 0, d - 1 do
              acc = acc + pq[((b * T + t) * Hq + h) * d + c] * pk[((b * S + j) * Hk + g) * d + c]
            end
            s[j] = acc * scale
            m = math.max(m, s[j])
          end
          local z = 0
          for j = 0, last do s[j] = math.exp(s[j] - m); z = z + s[j] end
          for c = 0, d - 1 do
            local acc = 0
            for j = 0, last do acc = acc + s[j] * pv[((b * S + j) * Hk + g) * d + c] end
            po[((b * T + t) * Hq + h) * d + c] = acc / z
          end
        end
      end
    end
    return out
  end

  it("with L = 0 equals plain softmax attention (both masks, GQA, S > T)", function()
    reseed(2)
    for _, mask in ipairs({ "causal", "full" }) do
      local q, k, v = randn({ 2, 9, 6, 5 }), randn({ 2, 13, 2, 5 }), randn({ 2, 13, 2, 5 })
      local want = plain_attention(q, k, v, mask == "causal")
      for _, impl in ipairs({ "reference", "fast" }) do
        local o = moda.attention(q, k, v, nil, nil, { mask = mask, impl = impl })
        assert_close(o, want, 1e-12, string.format("seed=%d mask=%s impl=%s", SEED, mask, impl))
      end
    end
  end)
end)

describe("fast attention against the reference", function()
  -- Shapes drawn at random; cost (B*Hq*T*S*d) capped so the whole file stays well under the
  -- CI budget, with T, d and G drawn from lists that include primes and non-multiples of the
  -- kernel tiles.
  local TS = { 1, 2, 3, 7, 13, 31, 47, 64, 97, 127, 150, 211, 300 }
  local DS = { 16, 17, 32, 40, 64, 65, 128 }
  local GS = { 1, 2, 4, 8 }
  local LS = { 0, 1, 3, 8 }
  local CHUNKS = { 1, 7, 64 }
  local BUDGET = 1.5e8

  local function pick(list) return list[math.random(#list)] end

  local function draw()
    local c = { B = math.random(2), T = pick(TS), Hk = math.random(4), G = pick(GS), d = pick(DS),
                L = pick(LS), mask = pick({ "causal", "full" }), depth = pick({ "token", "chunk" }) }
    if c.depth == "chunk" then c.chunk = pick(CHUNKS) end
    while c.T > 1 and c.B * c.Hk * c.G * c.T * c.T * c.d > BUDGET do c.T = math.floor(c.T / 2) end
    c.S = c.T + (math.random() < 0.5 and math.random(0, 20) or 0)
    return c
  end

  local function check_case(c, dtype)
    c.dtype = dtype
    local x = inputs(c, dtype)
    local fast = run(x, c, "fast")
    -- the oracle is the float64 reference fed the same (possibly float32-rounded) inputs
    local ref = run(to64(x), c, "reference")
    compare(fast, ref, dtype == "float64" and 1e-10 or 1e-5, c, x)
  end

  local fixed = {
    { B = 1, T = 1, S = 1, Hk = 1, G = 1, d = 16, L = 0, mask = "causal", depth = "token" },
    { B = 1, T = 1, S = 9, Hk = 1, G = 8, d = 17, L = 3, mask = "causal", depth = "token" },
    { B = 2, T = 97, S = 110, Hk = 2, G = 4, d = 40, L = 8, mask = "causal", depth = "token" },
    { B = 1, T = 131, S = 131, Hk = 3, G = 2, d = 64, L = 3, mask = "causal", depth = "chunk", chunk = 7 },
    { B = 1, T = 150, S = 160, Hk = 1, G = 4, d = 65, L = 1, mask = "full", depth = "chunk", chunk = 64 },
    { B = 2, T = 47, S = 47, Hk = 1, G = 1, d = 128, L = 8, mask = "full", depth = "chunk", chunk = 1 },
    { B = 1, T = 200, S = 200, Hk = 1, G = 2, d = 16, L = 1, mask = "causal", depth = "chunk", chunk = 300 },
    -- G a multiple of the kernel's 6 rows (rows used in place) and L beyond the 64-row key block
    -- (the row-pointer buffers once held only 64 entries: a wrong o, then a crash)
    { B = 2, T = 29, S = 29, Hk = 1, G = 6, d = 64, L = 22, mask = "full", depth = "token" },
    { B = 1, T = 23, S = 30, Hk = 2, G = 3, d = 17, L = 70, mask = "causal", depth = "token" },
    { B = 1, T = 19, S = 19, Hk = 1, G = 12, d = 65, L = 66, mask = "full", depth = "chunk", chunk = 5 },
  }
  for i, c in ipairs(fixed) do
    for _, dtype in ipairs({ "float64", "float32" }) do
      it(string.format("matches on a fixed edge case %d (%s)", i, dtype), function()
        reseed(100 + i)
        check_case(c, dtype)
      end)
    end
  end

  for _, dtype in ipairs({ "float64", "float32" }) do
    it("matches on random shapes (" .. dtype .. ")", function()
      reseed(dtype == "float64" and 200 or 300)
      for _ = 1, 40 do check_case(draw(), dtype) end
    end)
  end

  it("gives depth = chunk with chunk = 1 exactly the token visibility", function()
    reseed(4)
    for _, mask in ipairs({ "causal", "full" }) do
      local c = { B = 2, T = 23, S = 30, Hk = 2, G = 3, d = 24, L = 3, mask = mask, depth = "token" }
      local x = inputs(c, "float64")
      for _, impl in ipairs({ "fast", "reference" }) do
        local a = run(x, c, impl)
        c.depth, c.chunk = "chunk", 1
        local b = run(x, c, impl)
        c.depth, c.chunk = "token", nil
        compare(b, a, 1e-13, c)
      end
    end
  end)

  it("reads strided views (first L slots of a depth buffer, a narrowed q) like contiguous copies", function()
    reseed(5)
    local B, T, S, Hk, G, d, Lmax, L = 2, 37, 41, 2, 2, 20, 6, 3
    local c = { B = B, T = T, S = S, Hk = Hk, G = G, d = d, L = L, mask = "causal", depth = "chunk", chunk = 5 }
    local kbuf, vbuf = randn({ B, T, Lmax, Hk, d }, "float32"), randn({ B, T, Lmax, Hk, d }, "float32")
    local qbuf = randn({ B, T, Hk * G + 3, d }, "float32")
    local strided = { q = qbuf:narrow(3, 2, Hk * G), k = randn({ B, S, Hk, d }, "float32"),
                      v = randn({ B, S, Hk, d }, "float32"), kd = kbuf:narrow(3, 1, L),
                      vd = vbuf:narrow(3, 1, L), dout = randn({ B, T, Hk * G, d }, "float32") }
    assert.is_false(strided.kd:is_contiguous())
    assert.is_false(strided.q:is_contiguous())
    local dense = {}
    for k, t in pairs(strided) do dense[k] = t:contiguous() end
    assert.is_true(dense.kd:is_contiguous())
    for _, impl in ipairs({ "fast", "reference" }) do
      compare(run(strided, c, impl), run(dense, c, impl), 1e-12, c)
    end
  end)

  it("computes the same backward bits with 1 and with several threads", function()
    reseed(6)
    local c = { B = 1, T = 150, S = 150, Hk = 2, G = 4, d = 32, L = 3, mask = "causal", depth = "chunk", chunk = 64 }
    local x = inputs(c, "float32")
    local saved = moda.get_num_threads()
    moda.set_num_threads(1)
    local one = run(x, c, "fast")
    moda.set_num_threads(math.max(2, saved))
    local many = run(x, c, "fast")
    moda.set_num_threads(saved)
    for _, name in ipairs({ "o", "lse", "dq", "dk", "dv", "dkd", "dvd" }) do
      assert(one[name]:equal(many[name]), "seed=" .. SEED .. ": " .. name .. " depends on the thread count")
    end
  end)

  it("runs float16 and bfloat16 CPU inputs through the reference (tolerance 1e-2)", function()
    reseed(7)
    local c = { B = 1, T = 19, S = 19, Hk = 1, G = 2, d = 16, L = 2, mask = "causal", depth = "token" }
    local x = inputs(c, "float32")
    for _, dtype in ipairs({ "float16", "bfloat16" }) do
      local xh = {}
      for k, t in pairs(x) do xh[k] = t:to(dtype) end
      local got = moda.attention(xh.q, xh.k, xh.v, xh.kd, xh.vd)
      assert.equal(dtype, got.dtype)
      local want = moda.attention(xh.q:to("float64"), xh.k:to("float64"), xh.v:to("float64"),
                                  xh.kd:to("float64"), xh.vd:to("float64"), { impl = "reference" })
      assert_close(got, want, 1e-2, "seed=" .. SEED .. " " .. dtype)
    end
  end)
end)
