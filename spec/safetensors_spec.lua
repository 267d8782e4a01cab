-- safetensors: moda.load / moda.save (lua/moda/io.lua over c/safetensors.c).
local moda = require("moda")
local ffi, C = moda.ffi, moda.C

local FIXTURE = "spec/fixtures/tiny.safetensors"
local DTYPES = { "float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8" }

-- ---- helpers ----

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  assert(f:write(bytes))
  assert(f:close())
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- A fresh empty directory, so a test can see every file a save leaves behind.
local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir '" .. p .. "'") == 0)
  return p
end

local function ls(dir)
  local names = {}
  local p = assert(io.popen("ls -A '" .. dir .. "'"))
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

local function rmdir(dir) os.execute("rm -rf '" .. dir .. "'") end

-- The raw little-endian bytes of a tensor in row-major order.
local function raw(t)
  local c = t:contiguous()
  local n = c:numel() * tonumber(C.moda_dtype_size(c.dtype_id))
  if n == 0 then return "" end
  return ffi.string(C.moda_tensor_data(c), n)
end

local function u64le(n)
  local b = {}
  for i = 1, 8 do b[i] = string.char(n % 256); n = math.floor(n / 256) end
  return table.concat(b)
end

-- A safetensors file from a header string and data; hlen overrides the length field.
local function st_bytes(header, data, hlen)
  return u64le(hlen or #header) .. header .. (data or "")
end

-- A random tensor of any dtype: values drawn in float64 and converted, ints spread widely.
local function random_tensor(shape, dtype)
  local lo, hi = -1000, 1000
  if dtype == "uint8" then lo, hi = 0, 255.99
  elseif dtype == "int32" then lo, hi = -2 ^ 31, 2 ^ 31 - 1
  elseif dtype == "int64" then lo, hi = -2 ^ 52, 2 ^ 52 end
  return moda.rand(shape, { dtype = "float64", low = lo, high = hi }):to(dtype)
end

local function load_error(bytes)
  local path = os.tmpname()
  write_file(path, bytes)
  local ok, err = pcall(moda.load, path)
  os.remove(path)
  assert.is_false(ok, "expected moda.load to fail")
  assert.is_string(err)
  return err, path
end

-- ---- specs ----

describe("safetensors round trip", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() rmdir(dir) end)

  it("keeps every dtype's bytes and shapes, for odd shapes and non-contiguous inputs", function()
    moda.manual_seed(7)
    local tensors = {}
    for _, dt in ipairs(DTYPES) do
      tensors[dt .. "/3x5x7"] = random_tensor({ 3, 5, 7 }, dt)
      tensors[dt .. "/one"] = random_tensor({ 1 }, dt)
      tensors[dt .. "/scalar"] = random_tensor({}, dt)
      tensors[dt .. "/empty"] = random_tensor({ 0, 4 }, dt)
      tensors[dt .. "/5d"] = random_tensor({ 2, 1, 3, 1, 2 }, dt)
      tensors[dt .. "/transposed"] = random_tensor({ 4, 6 }, dt):transpose(1, 2)
      tensors[dt .. "/narrowed"] = random_tensor({ 5, 9 }, dt):narrow(2, 3, 4)
    end
    assert.is_false(tensors["float32/transposed"]:is_contiguous())
    assert.is_false(tensors["int64/narrowed"]:is_contiguous())
    local path = dir .. "/all.safetensors"
    moda.save(path, tensors)
    local back, meta = moda.load(path)
    assert.is_nil(meta)
    local n = 0
    for name, t in pairs(tensors) do
      local b = back[name]
      assert.is_not_nil(b, name)
      assert.equal(t.dtype, b.dtype, name)
      assert.equal("cpu", b.device)
      assert.same(t:shape(), b:shape(), name)
      assert.is_true(b:is_contiguous())
      assert.is_true(raw(t) == raw(b), name .. ": bytes differ")
      n = n + 1
    end
    for name in pairs(back) do assert.is_not_nil(tensors[name], name) end
    assert.equal(7 * 7, n)
  end)

  it("saves cuda tensors (copied to the host)", function()
    local ok, g = pcall(function() return moda.randn({ 3, 4 }):to("cuda") end)
    if not ok then
      pending("no cuda backend: " .. tostring(g))
      return
    end
    local path = dir .. "/cuda.safetensors"
    local h = g:to("cpu")
    moda.save(path, { g = g, gt = g:transpose(1, 2) })
    local back = moda.load(path)
    assert.is_true(raw(back.g) == raw(h))
    assert.is_true(raw(back.gt) == raw(h:transpose(1, 2)))
  end)

  it("returns tensors that outlive the file's tensor list (GC-owned references)", function()
    local path = dir .. "/x.safetensors"
    moda.save(path, { x = moda.tensor({ 1, 2, 3 }, { dtype = "float64" }) })
    local x = moda.load(path).x
    collectgarbage()
    collectgarbage()
    assert.same({ 1, 2, 3 }, x:totable())
  end)

  it("saves and loads an empty table", function()
    local path = dir .. "/empty.safetensors"
    moda.save(path, {})
    assert.equal(u64le(8) .. "{}      ", read_file(path))
    local t, meta = moda.load(path)
    assert.same({}, t)
    assert.is_nil(meta)
  end)

  it("round-trips metadata, escapes and UTF-8 included", function()
    local meta = {
      format = "pt",
      quote = 'say "hi" \\ back/slash',
      controls = "a\nb\tc\rd\be\ff\1g\31h\127",
      unicode = "é ☃ 😀",
      [""] = "",
      ["key with spaces"] = "value",
    }
    local path = dir .. "/meta.safetensors"
    moda.save(path, { t = moda.zeros({ 2 }) }, meta)
    local t, back = moda.load(path)
    assert.same(meta, back)
    assert.same({ 0, 0 }, t.t:totable())
    moda.save(path, { t = moda.zeros({ 2 }) }, {})
    local _, empty = moda.load(path)
    assert.same({}, empty)
  end)

  it("reads metadata written with \\u escapes and surrogate pairs", function()
    local header = '{"__metadata__":{"a\\u00e9":"\\ud83d\\ude00 \\u2603\\/\\n"}}'
    local path = dir .. "/esc.safetensors"
    write_file(path, st_bytes(header))
    local t, meta = moda.load(path)
    assert.same({}, t)
    assert.same({ ["aé"] = "😀 ☃/\n" }, meta)
  end)
end)

describe("safetensors fixture", function()
  -- spec/fixtures/make_safetensors_fixture.py wrote it (checked against the safetensors package)
  it("reads exact values of every dtype", function()
    local t, meta = moda.load(FIXTURE)
    assert.same({ note = 'tiny "fixture"\né ☃ / tab\t' }, meta)
    local names = {}
    for k in pairs(t) do names[#names + 1] = k end
    table.sort(names)
    assert.same({ "a_i64", "b_f64", "c_f32", "c_f32_empty", "c_f32_scalar", "d_i32", "e_bf16", "f_f16", "g_u8" },
                names)
    assert.equal("int64", t.a_i64.dtype)
    assert.same({ -(2 ^ 53) + 1, 0, 2 ^ 40 + 7 }, t.a_i64:totable())
    assert.equal("float64", t.b_f64.dtype)
    assert.same({ { 1.5, -2.25, 1e300 }, { 5e-324, 0, math.huge } }, t.b_f64:totable())
    assert.equal("float32", t.c_f32.dtype)
    assert.same({ { { 0.5 }, { -1.25 } }, { { 2 ^ 100 }, { 2 ^ -140 } } }, t.c_f32:totable())
    assert.same({ 0, 3 }, t.c_f32_empty:shape())
    assert.equal("float32", t.c_f32_empty.dtype)
    assert.same({}, t.c_f32_scalar:shape())
    assert.equal(42.5, t.c_f32_scalar:item())
    assert.equal("int32", t.d_i32.dtype)
    assert.same({ -2 ^ 31, 2 ^ 31 - 1, 0, -1 }, t.d_i32:totable())
    assert.equal("bfloat16", t.e_bf16.dtype)
    assert.same({ 1, -3, 3.140625 }, t.e_bf16:totable())
    assert.equal("float16", t.f_f16.dtype)
    assert.same({ 1, -5, 2 ^ -24 }, t.f_f16:totable())
    assert.equal("uint8", t.g_u8.dtype)
    assert.same({ { 0, 1, 127 }, { 128, 254, 255 } }, t.g_u8:totable())
  end)

  it("is reproduced byte for byte by moda.save", function()
    local expected = read_file(FIXTURE)
    -- the same tensors built from values (some through non-contiguous views), not re-read
    local t = {
      a_i64 = moda.tensor({ -(2 ^ 53) + 1, 0, 2 ^ 40 + 7 }, { dtype = "int64" }),
      b_f64 = moda.tensor({ { 1.5, 5e-324 }, { -2.25, 0 }, { 1e300, math.huge } }, { dtype = "float64" }):t(),
      c_f32 = moda.tensor({ { { 0.5 }, { -1.25 } }, { { 2 ^ 100 }, { 2 ^ -140 } } }),
      c_f32_empty = moda.zeros({ 0, 3 }),
      c_f32_scalar = moda.tensor(42.5),
      d_i32 = moda.tensor({ 9, -2 ^ 31, 9, 2 ^ 31 - 1, 9, 0, 9, -1 }, { dtype = "int32" }):view(4, 2):select(2, 2),
      e_bf16 = moda.tensor({ 1, -3, 3.140625 }, { dtype = "bfloat16" }),
      f_f16 = moda.tensor({ 1, -5, 2 ^ -24 }, { dtype = "float16" }),
      g_u8 = moda.tensor({ { 0, 1, 127 }, { 128, 254, 255 } }, { dtype = "uint8" }),
    }
    local path = os.tmpname()
    moda.save(path, t, { note = 'tiny "fixture"\né ☃ / tab\t' })
    local got = read_file(path)
    os.remove(path)
    assert.equal(#expected, #got)
    assert.is_true(expected == got, "moda.save output differs from the fixture")
    -- and loading then saving the fixture gives it back too
    local loaded, meta = moda.load(FIXTURE)
    path = os.tmpname()
    moda.save(path, loaded, meta)
    got = read_file(path)
    os.remove(path)
    assert.is_true(expected == got, "load + save of the fixture is not the identity")
  end)
end)

describe("safetensors atomic save", function()
  local dir, path, original
  before_each(function()
    dir = tmpdir()
    path = dir .. "/model.safetensors"
    moda.save(path, { w = moda.ones({ 2, 2 }) }, { v = "1" })
    original = read_file(path)
  end)
  after_each(function() rmdir(dir) end)

  local function assert_untouched()
    assert.is_true(read_file(path) == original, "the existing file changed")
    assert.same({ "model.safetensors" }, ls(dir))   -- no temp file left behind
  end

  it("replaces the file on success and leaves no temp file", function()
    moda.save(path, { w = moda.zeros({ 3 }) })
    assert.same({ "model.safetensors" }, ls(dir))
    assert.same({ 0, 0, 0 }, moda.load(path).w:totable())
  end)

  it("fails cleanly into a directory that does not exist", function()
    local ok, err = pcall(moda.save, dir .. "/nope/x.safetensors", { w = moda.ones({ 2 }) })
    assert.is_false(ok)
    assert.matches("^moda.save: .*nope/x.safetensors", err)
    assert.matches("No such file or directory", err, 1, true)
    assert_untouched()
  end)

  it("removes the fully written temp file when the rename fails", function()
    local target = dir .. "/adir"
    assert(os.execute("mkdir '" .. target .. "'") == 0)
    local ok, err = pcall(moda.save, target, { w = moda.ones({ 1000 }) })
    assert.is_false(ok)
    assert.matches("renaming", err, 1, true)
    assert.same({ "adir", "model.safetensors" }, ls(dir))
    assert.same({}, ls(target))
    rmdir(target)
    assert_untouched()
  end)

  it("rejects bad arguments without touching the file", function()
    local t = moda.ones({ 2 })
    local cases = {
      { { path, { w = 1 } }, 'moda.save: tensors["w"]: expected a Tensor, got a number' },
      { { path, { w = t, b = "x" } }, 'moda.save: tensors["b"]: expected a Tensor, got a string' },
      { { path, { t } }, "moda.save: tensors: names must be strings, got a number" },
      { { path, t }, "moda.save: tensors: expected a table of name -> Tensor, got a float32 tensor" },
      { { path, nil }, "moda.save: tensors: expected a table of name -> Tensor, got a nil" },
      { { 42, { w = t } }, "moda.save: path: expected a string, got a number" },
      { { path, { w = t }, "meta" }, "moda.save: metadata: expected a table of strings or nil, got a string" },
      { { path, { w = t }, { a = 1 } }, 'moda.save: metadata["a"]: expected a string, got a number' },
      { { path, { w = t }, { [1] = "a" } }, "moda.save: metadata: keys must be strings, got a number" },
      { { path, { w = t }, { a = "\255" } }, "moda.save: " .. path .. ": metadata: invalid UTF-8" },
      { { path, { __metadata__ = t } }, '"__metadata__" is reserved' },
      { { path, { ["a\0b"] = t } }, "cannot contain a NUL byte" },
      { { path, { ["\255"] = t } }, "is not valid UTF-8" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(moda.save, unpack(c[1], 1, 3))
      assert.is_false(ok, c[2])
      assert.is_truthy(err:find(c[2], 1, true), "expected <" .. c[2] .. "> in <" .. err .. ">")
      assert_untouched()
    end
  end)

  it("names the argument of moda.load", function()
    local ok, err = pcall(moda.load, 5)
    assert.is_false(ok)
    assert.equal("moda.load: path: expected a string, got a number", err:gsub("^[^:]*:%d+: ", ""))
    ok, err = pcall(moda.load, dir .. "/missing.safetensors")
    assert.is_false(ok)
    assert.matches("^moda.load: .*missing.safetensors: cannot open: No such file", err)
    ok, err = pcall(moda.load, dir)
    assert.is_false(ok)
    assert.matches("not a regular file", err, 1, true)
  end)
end)

describe("safetensors malformed files", function()
  local T = '{"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}'
  local D24 = string.rep("\0", 24)
  local function entry(name, dtype, shape, b, e)
    return string.format('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}', name, dtype, shape, b, e)
  end
  local cases = {
    { "empty file", "", "file is 0 bytes, too short" },
    { "shorter than 8 bytes", "\16\0\0", "file is 3 bytes, too short" },
    { "header length 0", st_bytes("", D24), "header length is 0" },
    { "huge header length", st_bytes(T, D24, 2 ^ 40), "header length 1099511627776 is over the limit" },
    { "all-ones header length", string.rep("\255", 8) .. T .. D24, "is over the limit" },
    { "header length beyond the file", st_bytes(T, D24, 1000), "header length 1000 runs past the end of the file" },
    { "header cut", st_bytes(T, ""):sub(1, 30), "header length 57 runs past the end of the file (30 bytes)" },
    { "data cut", st_bytes(T, D24:sub(1, 20)), 'tensor "t": data_offsets [0, 24] run past the end of the data (20 bytes)' },
    { "JSON: truncated", st_bytes('{"t":{"dtype"'), "header is not valid JSON: " },
    { "JSON: trailing comma", st_bytes('{"a":"b",}'), "expected a string key" },
    { "JSON: single quotes", st_bytes("{'t':1}"), "expected a string key at byte 1" },
    { "JSON: missing colon", st_bytes('{"t" 1}'), "expected ':'" },
    { "JSON: trailing garbage", st_bytes("{} x"), "unexpected 'x' after the JSON value" },
    { "JSON: bad escape", st_bytes('{"a\\x":1}'), "invalid escape '\\x'" },
    { "JSON: lone surrogate", st_bytes('{"\\udc00":1}'), "lone low surrogate" },
    { "JSON: invalid UTF-8", st_bytes('{"\192\175":1}'), "invalid UTF-8" },
    { "JSON: raw newline in string", st_bytes('{"a\nb":1}'), "unescaped control character" },
    { "JSON: too deep", st_bytes(string.rep("[", 100) .. string.rep("]", 100)), "nested deeper than 64" },
    { "JSON: leading zero", st_bytes('{"t":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}}', "x"), "leading zero" },
    { "not an object", st_bytes('[1,2]'), "header is an array, expected a JSON object" },
    { "entry not an object", st_bytes('{"t":5}'), 'tensor "t": entry is a number, expected an object' },
    { "unknown dtype", st_bytes("{" .. entry("t", "F99", "2", 0, 8) .. "}", D24:sub(1, 8)), 'tensor "t": unknown dtype "F99"' },
    { "unsupported dtype", st_bytes("{" .. entry("t", "I8", "2", 0, 2) .. "}", "ab"), 'dtype "I8" is not supported' },
    { "dtype not a string", st_bytes('{"t":{"dtype":7,"shape":[],"data_offsets":[0,1]}}', "x"), "dtype is a number, expected a string" },
    { "missing data_offsets", st_bytes('{"t":{"dtype":"U8","shape":[1]}}', "x"), 'tensor "t": missing "data_offsets"' },
    { "missing shape", st_bytes('{"t":{"dtype":"U8","data_offsets":[0,1]}}', "x"), 'missing "shape"' },
    { "extra key", st_bytes('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}', "x"), 'unexpected key "x"' },
    { "data_offsets of 3", st_bytes('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,1]}}', "x"), "array of 2 integers" },
    { "offsets out of bounds", st_bytes("{" .. entry("t", "U8", "4", 4, 8) .. "}", "abcd"), "run past the end of the data (4 bytes)" },
    { "begin after end", st_bytes("{" .. entry("t", "U8", "0", 4, 0) .. "}", "abcd"), "end before they begin" },
    { "overlapping offsets", st_bytes("{" .. entry("a", "U8", "4", 0, 4) .. "," .. entry("b", "U8", "4", 2, 6) .. "}", "abcdef"),
      'tensor "b": data_offsets [2, 6] overlap those of tensor "a"' },
    { "gap between tensors", st_bytes("{" .. entry("a", "U8", "2", 0, 2) .. "," .. entry("b", "U8", "2", 3, 5) .. "}", "abcde"),
      'tensor "b": gap of 1 bytes before' },
    { "gap at the start", st_bytes("{" .. entry("a", "U8", "2", 1, 3) .. "}", "abc"), "gap of 1 bytes" },
    { "bytes after the last tensor", st_bytes(T, D24 .. "xx"), "2 bytes of data after the last tensor are not covered" },
    { "shape product mismatch", st_bytes("{" .. entry("t", "F32", "2,2", 0, 24) .. "}", D24), "need 16 bytes but data_offsets [0, 24] hold 24" },
    { "negative shape", st_bytes("{" .. entry("t", "F32", "-2,3", 0, 24) .. "}", D24), 'tensor "t": shape[0] is negative' },
    { "fractional shape", st_bytes("{" .. entry("t", "F32", "2.5", 0, 8) .. "}", D24:sub(1, 8)), "shape[0] is not an integer" },
    { "overflowing shape", st_bytes("{" .. entry("t", "U8", "99999999999999999999", 0, 8) .. "}", D24:sub(1, 8)), "shape[0] overflows int64" },
    { "overflowing byte size", st_bytes("{" .. entry("t", "F64", "4611686018427387904,2", 0, 8) .. "}", D24:sub(1, 8)), "byte size overflows" },
    { "too many dims", st_bytes("{" .. entry("t", "U8", "1,1,1,1,1,1,1,1,1", 0, 1) .. "}", "x"), "9 dims, moda supports at most 8" },
    { "duplicate tensor", st_bytes("{" .. entry("t", "U8", "1", 0, 1) .. "," .. entry("t", "U8", "1", 1, 2) .. "}", "ab"), 'duplicate key "t"' },
    { "duplicate field", st_bytes('{"t":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "x"), 'duplicate key "dtype"' },
    { "metadata not strings", st_bytes('{"__metadata__":{"a":1}}'), '__metadata__: value of "a" is a number, expected a string' },
    { "metadata not an object", st_bytes('{"__metadata__":"x"}'), "__metadata__: is a string, expected an object of strings" },
    { "NUL in a name", st_bytes("{" .. entry("a\\u0000b", "U8", "1", 0, 1) .. "}", "x"), "name contains a NUL character" },
  }

  for _, c in ipairs(cases) do
    it("rejects: " .. c[1], function()
      local err, path = load_error(c[2])
      assert.is_truthy(err:find("moda.load: " .. path .. ": ", 1, true), "no prefix/path in: " .. err)
      assert.is_truthy(err:find(c[3], 1, true), "expected <" .. c[3] .. "> in <" .. err .. ">")
    end)
  end

  it("accepts the edge cases the format allows", function()
    local path = os.tmpname()
    -- empty tensors anywhere in the order, whitespace padding, an empty object
    write_file(path, st_bytes("{" .. entry("b", "U8", "2", 0, 2) .. "," .. entry("a", "F32", "0,5", 2, 2) .. "}   \n\t ", "xy"))
    local t = moda.load(path)
    assert.same({ 0, 5 }, t.a:shape())
    assert.same({ 120, 121 }, t.b:totable())
    write_file(path, st_bytes("{}"))
    assert.same({}, (moda.load(path)))
    os.remove(path)
  end)
end)

describe("safetensors fuzzing", function()
  it("loads or errors, never crashes, on 200 corrupted files", function()
    local seed = tonumber(os.getenv("MODA_FUZZ_SEED")) or os.time()
    math.randomseed(seed)
    local good = read_file(FIXTURE)
    local path = os.tmpname()
    local loaded = 0
    for i = 1, 200 do
      local bytes
      local kind = math.random(3)
      if kind == 1 then
        bytes = good:sub(1, math.random(0, #good - 1))          -- truncated
      else
        local b = { good:byte(1, -1) }
        for _ = 1, math.random(1, kind == 2 and 3 or 12) do
          -- kind 2 aims at the header, where a flip is more interesting than in the data
          local at = kind == 2 and math.random(1, 640) or math.random(1, #b)
          b[at] = math.random(0, 255)
        end
        bytes = string.char(unpack(b))
      end
      write_file(path, bytes)
      local ok, err = pcall(moda.load, path)
      if ok then
        loaded = loaded + 1
      elseif type(err) ~= "string" or not err:find("moda.load: " .. path .. ": ", 1, true) then
        os.remove(path)
        error(string.format("fuzz iteration %d (seed %d; rerun with MODA_FUZZ_SEED=%d): bad error %s",
                            i, seed, seed, tostring(err)))
      end
    end
    os.remove(path)
    assert.is_true(loaded < 200, "seed " .. seed .. ": every corrupted file loaded")
  end)
end)
