-- Tensor: creation, views, copies and conversions, random numbers, ops, printing, memory.
local moda = require("moda")

local function rss_kib()
  local f = io.open("/proc/self/statm", "r")
  if not f then return nil end
  local _, resident = f:read("*n", "*n")
  f:close()
  return resident * 4
end

describe("tensor creation", function()
  it("builds from nested tables with the right shape, dtype and values", function()
    local t = moda.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    assert.same({ 2, 3 }, t:shape())
    assert.equal("float32", t.dtype)
    assert.equal("cpu", t.device)
    assert.equal(2, t:dim())
    assert.equal(3, t:size(2))
    assert.equal(3, t:size(-1))
    assert.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:totable())
    assert.equal(6, t[2][3])
    assert.equal(2, #t)
  end)

  it("makes 0-d tensors from numbers", function()
    local t = moda.tensor(2.5, { dtype = "float64" })
    assert.equal(0, t:dim())
    assert.equal(2.5, t:item())
  end)

  it("rejects ragged tables and non-numbers with the path of the bad entry", function()
    local ok, err = pcall(moda.tensor, { { 1, 2 }, { 3 } })
    assert.is_false(ok)
    assert.matches("data%[2%]", err)
    ok, err = pcall(moda.tensor, { 1, "x" })
    assert.is_false(ok)
    assert.matches("data%[2%]: expected a number", err)
  end)

  it("zeros, ones, full, empty take shape tables or numbers and options", function()
    assert.same({ { 0, 0 } }, moda.zeros({ 1, 2 }):totable())
    assert.same({ 1, 1, 1 }, moda.ones(3, { dtype = "int32" }):totable())
    assert.equal("int32", moda.ones(3, { dtype = "int32" }).dtype)
    assert.same({ 7, 7 }, moda.full({ 2 }, 7):totable())
    assert.same({ 4, 0, 2 }, moda.empty(4, 0, 2):shape())
    assert.equal(0, moda.empty(4, 0, 2):numel())
  end)

  it("every dtype round-trips small integers", function()
    for _, dt in ipairs({ "float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8" }) do
      local t = moda.tensor({ 0, 1, 2, 100 }, { dtype = dt })
      assert.equal(dt, t.dtype)
      assert.same({ 0, 1, 2, 100 }, t:totable())
    end
  end)

  it("rejects bad shapes, dtypes and devices naming the argument", function()
    local ok, err = pcall(moda.zeros, { 2, -1 })
    assert.is_false(ok); assert.matches("shape%[2%]", err)
    ok, err = pcall(moda.zeros, { 2 }, { dtype = "float8" })
    assert.is_false(ok); assert.matches("dtype: expected one of", err)
    ok, err = pcall(moda.zeros, { 2 }, { device = "tpu" })
    assert.is_false(ok); assert.matches("device", err)
    ok, err = pcall(moda.zeros, { 1, 1, 1, 1, 1, 1, 1, 1, 1 })
    assert.is_false(ok); assert.matches("at most 8 dims", err)
  end)
end)

describe("views", function()
  it("share storage: writes through a view show in the base", function()
    local a = moda.arange(12):view(3, 4)
    local n = a:narrow(2, 2, 2)
    n:fill(-1)
    assert.same({ { 0, -1, -1, 3 }, { 4, -1, -1, 7 }, { 8, -1, -1, 11 } }, a:totable())
    local tr = a:transpose(1, 2)
    tr[1][3] = 42                                  -- element (3, 1) of a
    assert.equal(42, a:get({ 3, 1 }))
    local s = a:select(1, 2)
    s:fill(5)
    assert.same({ 5, 5, 5, 5 }, a[2]:totable())
  end)

  it("transpose and permute move strides, not data", function()
    local a = moda.arange(24):view(2, 3, 4)
    local p = a:permute(3, 1, 2)
    assert.same({ 4, 2, 3 }, p:shape())
    assert.same({ 1, 12, 4 }, p:stride())
    assert.is_false(p:is_contiguous())
    assert.equal(a:get({ 2, 3, 4 }), p:get({ 4, 2, 3 }))
  end)

  it("contiguous copies only when needed", function()
    local a = moda.arange(6):view(2, 3)
    local c = a:contiguous()
    c[1][1] = 99                                    -- same storage: a sees it
    assert.equal(99, a:get({ 1, 1 }))
    local t = a:t():contiguous()
    assert.is_true(t:is_contiguous())
    t[1][1] = -5                                    -- a copy: a does not see it
    assert.equal(99, a:get({ 1, 1 }))
    assert.same({ { 99, 3 }, { 1, 4 }, { 2, 5 } }, a:t():totable())
  end)

  it("view infers one -1 dim and refuses non-contiguous input; reshape copies", function()
    local a = moda.arange(12)
    assert.same({ 3, 4 }, a:view(3, -1):shape())
    local ok, err = pcall(function() return a:view(3, 4):t():view(12) end)
    assert.is_false(ok); assert.matches("not contiguous", err)
    assert.same({ 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11 }, a:view(3, 4):t():reshape(12):totable())
  end)

  it("refuses non-integer indices and sizes instead of truncating them", function()
    local a = moda.ones(3, 4)
    local ok, err = pcall(function() return a:narrow(1, 1.5, 1) end)
    assert.is_false(ok); assert.matches("expected integers", err)
    ok, err = pcall(function() return a[1.5] end)
    assert.is_false(ok); assert.matches("select: index: expected an integer", err)
    ok, err = pcall(function() return a:get({ 1, 2.5 }) end)
    assert.is_false(ok); assert.matches("index%[2%]: expected an integer", err)
    ok, err = pcall(moda.zeros, 1e30)
    assert.is_false(ok); assert.matches("shape%[1%]: expected a non%-negative integer", err)
  end)

  it("narrow and select check their bounds", function()
    local a = moda.zeros(3, 4)
    assert.is_false(pcall(function() return a:narrow(2, 3, 3) end))
    assert.is_false(pcall(function() return a:select(1, 4) end))
    assert.is_false(pcall(function() return a:transpose(1, 3) end))
  end)
end)

describe("copies and conversions", function()
  it("converts float32 to float16 and bfloat16 with round to nearest even", function()
    -- 1 + 2^-11 is halfway between two halves: rounds to even (1.0); 1 + 3*2^-11 rounds up
    local h = moda.tensor({ 1 + 2 ^ -11, 1 + 3 * 2 ^ -11, 65504, 70000, 2 ^ -24, -0.0 }, { dtype = "float64" })
      :to("float32"):to("float16"):to("float64"):totable()
    assert.same({ 1, 1 + 2 ^ -9, 65504, math.huge, 2 ^ -24, 0 }, h)
    local b = moda.tensor({ 1 + 2 ^ -8, 1 + 3 * 2 ^ -8, 3.0e38 }):to("bfloat16"):to("float64"):totable()
    -- 3e38 = 1.7632 * 2^127: the 7-bit mantissa 0.7632 * 128 = 97.7 rounds to 98
    assert.same({ 1, 1 + 2 ^ -6, (1 + 98 / 128) * 2 ^ 127 }, b)
  end)

  it("keeps NaN a NaN in half precision", function()
    local n = moda.tensor({ 0 / 0 }):to("float16"):to("float32"):get({ 1 })
    assert.is_true(n ~= n)
  end)

  it("clamps out-of-range values into integer dtypes", function()
    assert.same({ 0, 255, 3 }, moda.tensor({ -5, 300, 3.7 }):to("uint8"):totable())
    assert.same({ 2147483647, -2147483648 }, moda.tensor({ 1e12, -1e12 }, { dtype = "float64" }):to("int32"):totable())
  end)

  it("copies between strided tensors of different dtypes", function()
    local src = moda.randn({ 5, 7 }, { dtype = "float64" })
    local dst = moda.zeros({ 7, 5 }, { dtype = "float32" }):t()
    dst:copy(src)
    local back = dst:to("float64")
    assert.is_true(back:allclose(src, 1e-6, 1e-7))
    assert.is_false(pcall(function() dst:copy(moda.zeros(3)) end))
  end)

  it("says why there is no GPU when a tensor is asked for on one", function()
    if moda.cuda.available() then
      pending("a GPU is present here: nothing to refuse")
      return
    end
    local reason = moda.cuda.reason()
    assert.is_string(reason)
    local asks = {
      function() return moda.zeros({ 2, 3 }, { device = "cuda" }) end,
      function() return moda.ones(4):cuda() end,
      function() return moda.ones(4):to({ device = "cuda", dtype = "float16" }) end,
      function() return moda.empty_like(moda.ones(4), { device = "cuda" }) end,
    }
    for i, ask in ipairs(asks) do
      local ok, err = pcall(ask)
      assert.is_false(ok, "ask " .. i)
      assert.is_truthy(tostring(err):find("CUDA not available: " .. reason, 1, true), "ask " .. i .. ": " .. tostring(err))
    end
  end)

  it("clone is a deep copy", function()
    local a = moda.ones(3)
    local b = a:clone()
    b:fill(2)
    assert.same({ 1, 1, 1 }, a:totable())
  end)
end)

describe("random numbers", function()
  it("manual_seed makes draws reproducible", function()
    moda.manual_seed(1234)
    local a = moda.randn({ 100 }):totable()
    moda.manual_seed(1234)
    local b = moda.randn({ 100 }):totable()
    assert.same(a, b)
    local c = moda.randn({ 100 }):totable()
    assert.are_not.same(a, c)
  end)

  it("gives the same stream whatever the thread count", function()
    local saved = moda.get_num_threads()
    moda.set_num_threads(1)
    moda.manual_seed(99)
    local a = moda.randn({ 64, 1000 }, { dtype = "float64" })
    moda.set_num_threads(4)
    moda.manual_seed(99)
    local b = moda.randn({ 64, 1000 }, { dtype = "float64" })
    moda.set_num_threads(saved)
    assert.equal(0, (a - b):absmax())
  end)

  it("draws normal and uniform values with the right moments", function()
    moda.manual_seed(7)
    local n = moda.randn({ 200000 }, { dtype = "float64", mean = 1, std = 2 })
    assert.is_true(math.abs(n:mean() - 1) < 0.03)
    local var = ((n - 1) * (n - 1)):mean()
    assert.is_true(math.abs(var - 4) < 0.08)
    local u = moda.rand({ 200000 }, { dtype = "float64", low = -1, high = 3 })
    assert.is_true(u:min() >= -1 and u:max() < 3)
    assert.is_true(math.abs(u:mean() - 1) < 0.02)
  end)

  it("fills strided views in place", function()
    local a = moda.zeros(4, 6)
    a:narrow(2, 2, 3):copy(moda.ones(4, 3))
    assert.equal(12, a:sum())
  end)
end)

describe("ops", function()
  it("broadcasts elementwise ops numpy-style", function()
    local a = moda.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    local b = moda.tensor({ 10, 20, 30 })
    assert.same({ { 11, 22, 33 }, { 14, 25, 36 } }, (a + b):totable())
    assert.same({ { -9, -18, -27 }, { -6, -15, -24 } }, (a - b):totable())
    assert.same({ { 2, 4, 6 }, { 8, 10, 12 } }, (a * 2):totable())
    assert.same({ { 1, 0.5, 1 / 3 }, { 0.25, 0.2, 1 / 6 } }, (1 / a):to("float64"):totable() and
      (1 / a:to("float64")):totable())
    assert.same({ { -1, -2, -3 }, { -4, -5, -6 } }, (-a):totable())
    assert.same({ { 1, 4, 9 }, { 16, 25, 36 } }, (a ^ 2):totable())
    local ok, err = pcall(function() return a + moda.ones(2) end)
    assert.is_false(ok); assert.matches("do not broadcast", err)
  end)

  it("promotes mixed dtypes to the wider float", function()
    local r = moda.ones(2, { dtype = "float32" }) + moda.ones(2, { dtype = "float64" })
    assert.equal("float64", r.dtype)
  end)

  it("reduces whole tensors, and NaN poisons max", function()
    local a = moda.tensor({ { 1, -7 }, { 3, 2 } })
    assert.equal(-1, a:sum())
    assert.equal(3, a:max())
    assert.equal(-7, a:min())
    assert.equal(7, a:absmax())
    assert.equal(math.sqrt(63), a:norm())
    local n = moda.tensor({ 1, 0 / 0, 2 })
    assert.equal(1, n:count_nan())
    local m = n:max()
    assert.is_true(m ~= m)
  end)

  it("matmul matches a hand-written product in both float types", function()
    for _, dt in ipairs({ "float32", "float64" }) do
      moda.manual_seed(5)
      local a = moda.randn({ 2, 3, 5 }, { dtype = dt })
      local b = moda.randn({ 2, 5, 4 }, { dtype = dt })
      local c = a:matmul(b)
      for bi = 1, 2 do
        for i = 1, 3 do
          for j = 1, 4 do
            local s = 0
            for k = 1, 5 do s = s + a:get({ bi, i, k }) * b:get({ bi, k, j }) end
            assert.is_true(math.abs(c:get({ bi, i, j }) - s) < 1e-5)
          end
        end
      end
    end
    assert.is_false(pcall(function() return moda.ones(2, 3):matmul(moda.ones(2, 3)) end))
  end)

  it("in-place ops write into the tensor", function()
    local a = moda.ones(2, 2)
    a:add_(moda.tensor({ 1, 2 })):mul_(3)
    assert.same({ { 6, 9 }, { 6, 9 } }, a:totable())
  end)
end)

describe("printing", function()
  it("prints values then the type and size, torch7 style", function()
    local s = tostring(moda.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }))
    assert.equal("  1   2   3\n  4   5   6\n[moda.FloatTensor of size 2x3]", s)
    local d = tostring(moda.tensor({ 0.5, -1.25 }, { dtype = "float64" }))
    assert.equal(" 0.5000\n-1.2500\n[moda.DoubleTensor of size 2]", d:gsub("^ +", " "))
  end)

  it("prints 3-d tensors slice by slice and summarizes big ones", function()
    local s = tostring(moda.arange(8):view(2, 2, 2))
    assert.matches("%(1,%.,%.%) = \n", s)
    assert.matches("%(2,%.,%.%) = \n", s)
    assert.matches("%[moda.FloatTensor of size 2x2x2%]$", s)
    local big = tostring(moda.zeros(100, 100))
    assert.matches("%.%.%.", big)
    assert.is_true(#big < 2000)
  end)
end)

describe("memory", function()
  it("frees tensors through the GC: 10k allocations keep RSS bounded", function()
    collectgarbage()
    local before = rss_kib()
    if not before then pending("no /proc/self/statm on this system") return end
    for _ = 1, 10000 do
      local t = moda.empty(256, 256)               -- 256 KiB each: 2.5 GiB if none were freed
      local v = t:narrow(1, 1, 8):t()               -- views hold references to the storage too
      v:fill(1)
    end
    collectgarbage()
    collectgarbage()
    local grown = rss_kib() - before
    assert.is_true(grown < 200 * 1024, "RSS grew by " .. grown .. " KiB")
  end)
end)
