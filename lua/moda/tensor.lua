-- moda.tensor: the Tensor type. A Tensor is a `moda_tensor &` cdata (a reference to the C struct)
-- with a metatype, so it can be passed straight to any C function of libmoda that takes a
-- `moda_tensor *`; memory is released by the GC (ffi.gc calls moda_tensor_free, which drops one
-- reference to the shared storage). It is a reference and not a pointer because LuaJIT indexes
-- pointers with numbers itself (p[i] is pointer arithmetic), which would hide t[i].
--
-- Lua-side indices are 1-based, as in torch7: t:size(1), t:narrow(dim, start, len),
-- t:transpose(1, 2), t[i]. Arithmetic operators are elementwise (PyTorch semantics); matrix
-- products are t:matmul(b).
local lib = require("moda.ffi")
local ffi, C, check = lib.ffi, lib.C, lib.check

local Tensor = {}          -- methods
local M = { Tensor = Tensor }

local DTYPES = { float32 = 0, float64 = 1, float16 = 2, bfloat16 = 3, int32 = 4, int64 = 5, uint8 = 6 }
local DTYPE_NAMES = { [0] = "float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8" }
local DEVICES = { cpu = 0, cuda = 1 }
local DEVICE_NAMES = { [0] = "cpu", "cuda" }
local CTYPES = { [0] = "float*", "double*", "uint16_t*", "uint16_t*", "int32_t*", "int64_t*", "uint8_t*" }
local TYPE_NAMES = { [0] = "FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "IntTensor",
                     "LongTensor", "ByteTensor" }
M.DTYPES, M.DEVICES = DTYPES, DEVICES

local tensor_ct = ffi.typeof("moda_tensor")
local out_ct = ffi.typeof("moda_tensor*[1]")
local i64_arr = ffi.typeof("int64_t[?]")
local i32_arr = ffi.typeof("int32_t[?]")
local dbl1 = ffi.typeof("double[1]")

local function is_tensor(x) return ffi.istype(tensor_ct, x) end
M.is_tensor = is_tensor
local count_allocation

-- Takes ownership of a fresh moda_tensor* (one reference) and hands it to the GC as a Tensor.
local function wrap(ptr)
  if ptr == nil then error("moda: internal error: NULL tensor", 2) end
  return ffi.gc(ptr[0], C.moda_tensor_free)
end
M.wrap = wrap
-- wrap() for a tensor whose storage is newly allocated memory, counted towards the GC trigger.
function M.wrap_allocated(ptr) return count_allocation(wrap(ptr)) end

-- Runs a C function that fills an out-pointer; returns the new Tensor.
local function make(what, fn, ...)
  local out = out_ct()
  check(fn(out, ...), what)
  return wrap(out[0])
end

local function argerror(fmt, ...) error(string.format(fmt, ...), 3) end

-- An integer Lua number that converts to int64 exactly.
local function is_int(x)
  return type(x) == "number" and x == math.floor(x) and x > -2 ^ 53 and x < 2 ^ 53
end

local function describe(x)
  if is_tensor(x) then return "a " .. x.dtype .. " tensor" end
  return "a " .. type(x)
end

function M.check_tensor(x, what, argname)
  if not is_tensor(x) then
    error(string.format("%s: %s: expected a Tensor, got %s", what, argname, describe(x)), 3)
  end
  return x
end

local function dtype_id(name, what)
  local id = DTYPES[name]
  if id == nil then
    local names = {}
    for k in pairs(DTYPES) do names[#names + 1] = k end
    table.sort(names)
    error(string.format("%s: dtype: expected one of %s, got %s", what, table.concat(names, ", "), tostring(name)), 4)
  end
  return id
end

local function device_id(name, what)
  local id = DEVICES[name]
  if id == nil then
    error(string.format("%s: device: expected \"cpu\" or \"cuda\", got %s", what, tostring(name)), 4)
  end
  -- say why there is no GPU here (moda.cuda.reason()), not only that the core has no backend for it
  local cuda = package.loaded["moda.cuda"]
  if id == DEVICES.cuda and cuda and not cuda.available() then
    error(string.format("%s: device \"cuda\": CUDA not available: %s", what, tostring(cuda.reason())), 4)
  end
  return id
end

-- Shapes come as a table {2, 3} or as numbers: f(2, 3, opts). Returns shape table, opts.
-- allow_infer admits one -1 (view).
local shape_args_allowing
local function shape_args(what, ...)
  return shape_args_allowing(what, false, ...)
end
shape_args_allowing = function(what, allow_infer, ...)
  local a = ...
  local shape, opts
  if type(a) == "table" and not is_tensor(a) then
    shape, opts = a, select(2, ...)
  else
    shape = {}
    local n = select("#", ...)
    for i = 1, n do
      local v = select(i, ...)
      if type(v) == "number" then shape[#shape + 1] = v
      elseif i == n and (type(v) == "table" or v == nil) then opts = v
      else error(string.format("%s: size %d: expected a number, got %s", what, i, describe(v)), 3) end
    end
  end
  if #shape > 8 then error(string.format("%s: shape: at most 8 dims, got %d", what, #shape), 3) end
  for i = 1, #shape do
    local s = shape[i]
    if not is_int(s) or (s < 0 and not (allow_infer and s == -1)) then
      error(string.format("%s: shape[%d]: expected a non-negative integer, got %s", what, i, tostring(s)), 3)
    end
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("%s: opts: expected a table, got %s", what, describe(opts)), 3)
  end
  return shape, opts or {}
end

local function shape_array(shape)
  local arr = i64_arr(math.max(#shape, 1))
  for i = 1, #shape do arr[i - 1] = shape[i] end
  return arr
end

-- LuaJIT's GC sees only the small cdata of a tensor, not the memory behind it, so a loop that
-- makes big tensors and few Lua objects would outrun it. As torch7 did, count the bytes handed
-- out and force a full collection after every GC_BYTES of them.
local GC_BYTES = 1024 * 1024 * 1024
local bytes_since_gc = 0
count_allocation = function(t)
  bytes_since_gc = bytes_since_gc + tonumber(t.storage.nbytes)
  if bytes_since_gc > GC_BYTES then
    bytes_since_gc = 0
    collectgarbage()
  end
  return t
end

local function new_empty(what, shape, opts)
  local dt = dtype_id(opts.dtype or "float32", what)
  local dev = device_id(opts.device or "cpu", what)
  return count_allocation(make(what, C.moda_tensor_empty, dt, dev, #shape, shape_array(shape)))
end

function M.empty(...)
  local shape, opts = shape_args("moda.empty", ...)
  return new_empty("moda.empty", shape, opts)
end

function M.zeros(...)
  local shape, opts = shape_args("moda.zeros", ...)
  local t = new_empty("moda.zeros", shape, opts)
  check(C.moda_tensor_fill(t, 0), "moda.zeros")
  return t
end

function M.ones(...)
  local shape, opts = shape_args("moda.ones", ...)
  local t = new_empty("moda.ones", shape, opts)
  check(C.moda_tensor_fill(t, 1), "moda.ones")
  return t
end

function M.full(shape, value, opts)
  local s, o = shape_args("moda.full", shape, opts)
  if type(value) ~= "number" then argerror("moda.full: value: expected a number, got %s", describe(value)) end
  local t = new_empty("moda.full", s, o)
  check(C.moda_tensor_fill(t, value), "moda.full")
  return t
end

-- randn(shape, {dtype=, device=, mean=0, std=1}); rand(shape, {low=0, high=1})
function M.randn(...)
  local shape, opts = shape_args("moda.randn", ...)
  local t = new_empty("moda.randn", shape, opts)
  check(C.moda_tensor_randn(t, opts.mean or 0, opts.std or 1), "moda.randn")
  return t
end

function M.rand(...)
  local shape, opts = shape_args("moda.rand", ...)
  local t = new_empty("moda.rand", shape, opts)
  check(C.moda_tensor_rand(t, opts.low or 0, opts.high or 1), "moda.rand")
  return t
end

function M.arange(n, opts)
  if not is_int(n) or n < 0 then argerror("moda.arange: n: expected a non-negative integer, got %s", tostring(n)) end
  local h = new_empty("moda.arange", { n }, { dtype = "float64" })
  local p = ffi.cast("double*", C.moda_tensor_data(h))
  for i = 0, n - 1 do p[i] = i end
  return h:to((opts or {}).dtype or "float32"):to((opts or {}).device or "cpu")
end

function M.manual_seed(seed)
  if not is_int(seed) or seed < 0 then
    argerror("moda.manual_seed: seed: expected a non-negative integer, got %s", tostring(seed))
  end
  C.moda_manual_seed(seed)
end

-- moda.tensor{{1,2},{3,4}} or moda.tensor(3.5) (0-d), {dtype=, device=}
function M.tensor(data, opts)
  opts = opts or {}
  if type(opts) ~= "table" then argerror("moda.tensor: opts: expected a table, got %s", describe(opts)) end
  if is_tensor(data) then return data:clone():to(opts.dtype or data.dtype):to(opts.device or data.device) end
  local shape = {}
  if type(data) == "table" then
    local x = data
    while type(x) == "table" do
      shape[#shape + 1] = #x
      x = x[1]
      if #shape > 8 then argerror("moda.tensor: data: nested deeper than 8 dims") end
    end
  elseif type(data) ~= "number" then
    argerror("moda.tensor: data: expected a number or a nested table of numbers, got %s", describe(data))
  end
  local h = new_empty("moda.tensor", shape, { dtype = "float64" })
  local p = ffi.cast("double*", C.moda_tensor_data(h))
  local n = 0
  local function walk(x, d, where)
    if d > #shape then
      if type(x) ~= "number" then argerror("moda.tensor: data%s: expected a number, got %s", where, describe(x)) end
      p[n] = x
      n = n + 1
      return
    end
    if type(x) ~= "table" or #x ~= shape[d] then
      argerror("moda.tensor: data%s: expected a table of %d entries (the data is not rectangular), got %s",
               where, shape[d], type(x) == "table" and (#x .. " entries") or describe(x))
    end
    for i = 1, shape[d] do walk(x[i], d + 1, where .. "[" .. i .. "]") end
  end
  walk(data, 1, "")
  local t = h
  local dt = opts.dtype or "float32"
  if dt ~= "float64" then
    t = new_empty("moda.tensor", shape, { dtype = dt })
    check(C.moda_tensor_copy(t, h), "moda.tensor")
  end
  if (opts.device or "cpu") ~= "cpu" then t = t:to(opts.device) end
  return t
end

-- ---- properties ----

local props = {
  dtype = function(t) return DTYPE_NAMES[t.dtype_id] end,
  device = function(t) return DEVICE_NAMES[t.device_id] end,
}

function Tensor.dim(t) return t.ndim end

local function dim_index(t, d, what)
  if not is_int(d) then argerror("%s: dim: expected an integer, got %s", what, tostring(d)) end
  local n = t.ndim
  local i = d < 0 and n + d + 1 or d
  if i < 1 or i > n then argerror("%s: dim %d out of range for a %d-d tensor", what, d, n) end
  return i - 1                         -- 0-based for C
end

function Tensor.shape(t)
  local s = {}
  for i = 0, t.ndim - 1 do s[i + 1] = tonumber(t.sizes[i]) end
  return s
end

function Tensor.size(t, d)
  if d == nil then return t:shape() end
  return tonumber(t.sizes[dim_index(t, d, "size")])
end

function Tensor.stride(t, d)
  if d == nil then
    local s = {}
    for i = 0, t.ndim - 1 do s[i + 1] = tonumber(t.strides[i]) end
    return s
  end
  return tonumber(t.strides[dim_index(t, d, "stride")])
end

function Tensor.numel(t) return tonumber(C.moda_tensor_numel(t)) end
Tensor.nelement = Tensor.numel
function Tensor.is_contiguous(t) return C.moda_tensor_is_contiguous(t) ~= 0 end

function Tensor.type(t)
  return "moda." .. (t.device_id == 1 and "Cuda" or "") .. TYPE_NAMES[t.dtype_id]
end

-- A typed pointer to element 0 (cpu memory for cpu tensors). Keep `t` alive while using it.
function Tensor.data(t)
  return ffi.cast(CTYPES[t.dtype_id], C.moda_tensor_data(t))
end

-- ---- views ----

function Tensor.view(t, ...)
  local shape = shape_args_allowing("view", true, ...)
  local n, infer = 1, nil
  for i, s in ipairs(shape) do
    if s == -1 then
      if infer then argerror("view: only one dim may be -1") end
      infer = i
    else n = n * s end
  end
  if infer then
    local total = t:numel()
    if n == 0 or total % n ~= 0 then argerror("view: cannot infer dim %d: %d elements do not divide into %d", infer, total, n) end
    shape[infer] = total / n
  end
  return make("view", C.moda_tensor_view, t, #shape, shape_array(shape))
end

function Tensor.reshape(t, ...)
  return t:contiguous():view(...)
end

function Tensor.transpose(t, a, b)
  return make("transpose", C.moda_tensor_transpose, t, dim_index(t, a, "transpose"), dim_index(t, b, "transpose"))
end

function Tensor.t(t)
  if t.ndim ~= 2 then argerror("t: expected a 2-d tensor, got %d-d", t.ndim) end
  return t:transpose(1, 2)
end

function Tensor.permute(t, ...)
  local dims = type(...) == "table" and (...) or { ... }
  if #dims ~= t.ndim then argerror("permute: expected %d dims, got %d", t.ndim, #dims) end
  local perm = i32_arr(math.max(#dims, 1))
  for i, d in ipairs(dims) do perm[i - 1] = dim_index(t, d, "permute") end
  return make("permute", C.moda_tensor_permute, t, #dims, perm)
end

function Tensor.narrow(t, dim, start, length)
  if not is_int(start) or not is_int(length) then
    argerror("narrow: start and length: expected integers, got %s and %s", tostring(start), tostring(length))
  end
  return make("narrow", C.moda_tensor_narrow, t, dim_index(t, dim, "narrow"), start - 1, length)
end

function Tensor.select(t, dim, index)
  if not is_int(index) then argerror("select: index: expected an integer, got %s", tostring(index)) end
  local d = dim_index(t, dim, "select")
  local i = index < 0 and tonumber(t.sizes[d]) + index + 1 or index
  return make("select", C.moda_tensor_select, t, d, i - 1)
end

function Tensor.contiguous(t)
  return make("contiguous", C.moda_tensor_contiguous, t)
end

-- ---- copies and conversion ----

local function empty_like(t, dtype, device)
  return count_allocation(make("empty_like", C.moda_tensor_empty, dtype or t.dtype_id, device or t.device_id, t.ndim,
                               t.sizes))
end
M.empty_like = function(t, opts)
  M.check_tensor(t, "moda.empty_like", "t")
  opts = opts or {}
  return empty_like(t, opts.dtype and dtype_id(opts.dtype, "moda.empty_like"),
                    opts.device and device_id(opts.device, "moda.empty_like"))
end

function Tensor.clone(t)
  local c = empty_like(t)
  check(C.moda_tensor_copy(c, t), "clone")
  return c
end

-- Copies src (same shape; any dtype, device, strides) into t; returns t.
function Tensor.copy(t, src)
  M.check_tensor(src, "copy", "src")
  check(C.moda_tensor_copy(t, src), "copy")
  return t
end

-- t:to("float64"), t:to("cuda"), t:to{dtype=, device=}. Returns t itself when nothing changes.
function Tensor.to(t, what)
  local dt, dev = t.dtype_id, t.device_id
  if type(what) == "table" then
    if what.dtype then dt = dtype_id(what.dtype, "to") end
    if what.device then dev = device_id(what.device, "to") end
  elseif DTYPES[what] then dt = DTYPES[what]
  elseif DEVICES[what] then dev = device_id(what, "to")
  else
    argerror("to: expected a dtype name, \"cpu\", \"cuda\" or {dtype=, device=}, got %s", tostring(what))
  end
  if dt == t.dtype_id and dev == t.device_id then return t end
  local c = empty_like(t, dt, dev)
  check(C.moda_tensor_copy(c, t), "to")
  return c
end

function Tensor.float(t) return t:to("float32") end
function Tensor.double(t) return t:to("float64") end
function Tensor.cuda(t) return t:to("cuda") end
function Tensor.cpu(t) return t:to("cpu") end

function Tensor.fill(t, value)
  if type(value) ~= "number" then argerror("fill: value: expected a number, got %s", describe(value)) end
  check(C.moda_tensor_fill(t, value), "fill")
  return t
end
function Tensor.zero(t) return t:fill(0) end

-- Element access with a 1-based index table (cpu tensors).
local function index_array(t, idx, what)
  if type(idx) ~= "table" or #idx ~= t.ndim then
    argerror("%s: index: expected a table of %d integers, got %s", what, t.ndim, describe(idx))
  end
  local arr = i64_arr(math.max(t.ndim, 1))
  for i = 1, t.ndim do
    local v = idx[i]
    if not is_int(v) then argerror("%s: index[%d]: expected an integer, got %s", what, i, tostring(v)) end
    arr[i - 1] = (v < 0 and tonumber(t.sizes[i - 1]) + v + 1 or v) - 1
  end
  return arr
end

function Tensor.get(t, idx)
  local v = dbl1()
  check(C.moda_tensor_get(t, index_array(t, idx, "get"), v), "get")
  return v[0]
end

function Tensor.set(t, idx, value)
  if type(value) ~= "number" then argerror("set: value: expected a number, got %s", describe(value)) end
  check(C.moda_tensor_set(t, index_array(t, idx, "set"), value), "set")
  return t
end

-- A 0-d or one-element tensor as a Lua number.
function Tensor.item(t)
  if t:numel() ~= 1 then argerror("item: expected a tensor with one element, got %d", t:numel()) end
  local c = t:to("cpu"):contiguous():view(1)
  return c:get({ 1 })
end

function Tensor.totable(t)
  local h = t:to("cpu"):to("float64"):contiguous()
  local p = ffi.cast("double*", C.moda_tensor_data(h))
  local shape = h:shape()
  if #shape == 0 then return p[0] end
  local n = 0
  local function build(d)
    local r = {}
    for i = 1, shape[d] do
      if d == #shape then r[i] = p[n]; n = n + 1 else r[i] = build(d + 1) end
    end
    return r
  end
  return build(1)
end

-- ---- arithmetic ----

local BIN = { add = 0, sub = 1, mul = 2, div = 3, pow = 4, max = 5, min = 6 }
local UN = { neg = 0, abs = 1, exp = 2, log = 3, sqrt = 4, tanh = 5, sigmoid = 6, relu = 7 }

-- The shape a and b broadcast to (numpy rules); C re-checks and reports mismatches.
local function broadcast_shape(a, b)
  local sa, sb = a:shape(), b:shape()
  local n = math.max(#sa, #sb)
  local s = {}
  for i = 1, n do
    local x = sa[#sa - n + i] or 1
    local y = sb[#sb - n + i] or 1
    s[i] = x == 1 and y or x
  end
  return s
end

-- Result dtype: the tensor's for tensor-number; the wider float for two tensors.
local RANK = { [6] = 0, [4] = 1, [5] = 2, [2] = 3, [3] = 3, [0] = 4, [1] = 5 }
local function result_dtype(a, b)
  if a.dtype_id == b.dtype_id then return a.dtype_id end
  return RANK[a.dtype_id] >= RANK[b.dtype_id] and a.dtype_id or b.dtype_id
end

local function binary(name, a, b)
  local op = BIN[name]
  if is_tensor(a) and is_tensor(b) then
    local shape = broadcast_shape(a, b)
    local out = count_allocation(make(name, C.moda_tensor_empty, result_dtype(a, b), a.device_id, #shape,
                                      shape_array(shape)))
    check(C.moda_tensor_binary(out, a, b, op), name)
    return out
  elseif is_tensor(a) and type(b) == "number" then
    local out = empty_like(a)
    check(C.moda_tensor_scalar(out, a, b, op, 0), name)
    return out
  elseif type(a) == "number" and is_tensor(b) then
    local out = empty_like(b)
    check(C.moda_tensor_scalar(out, b, a, op, 1), name)
    return out
  end
  error(string.format("%s: expected tensors or numbers, got %s and %s", name, describe(a), describe(b)), 3)
end

for name in pairs(BIN) do
  Tensor[name] = function(a, b) return binary(name, a, b) end
end
for name, op in pairs(UN) do
  Tensor[name] = function(t)
    local out = empty_like(t)
    check(C.moda_tensor_unary(out, t, op), name)
    return out
  end
end

-- In place: a:add_(b) etc. write into a (b broadcast to a's shape).
for _, name in ipairs({ "add", "sub", "mul", "div" }) do
  Tensor[name .. "_"] = function(a, b)
    if is_tensor(b) then check(C.moda_tensor_binary(a, a, b, BIN[name]), name .. "_")
    elseif type(b) == "number" then check(C.moda_tensor_scalar(a, a, b, BIN[name], 0), name .. "_")
    else argerror("%s_: expected a tensor or a number, got %s", name, describe(b)) end
    return a
  end
end

function Tensor.matmul(a, b)
  M.check_tensor(b, "matmul", "b")
  local sa, sb = a:shape(), b:shape()
  if #sa < 2 or #sb ~= #sa then
    argerror("matmul: expected two tensors of equal rank >= 2, got %d-d and %d-d", #sa, #sb)
  end
  local shape = {}
  for i = 1, #sa - 1 do shape[i] = sa[i] end
  shape[#sa] = sb[#sb]
  local out = make("matmul", C.moda_tensor_empty, a.dtype_id, a.device_id, #shape, shape_array(shape))
  check(C.moda_tensor_matmul(out, a, b), "matmul")
  return out
end

-- ---- reductions (whole tensor, returning a Lua number) ----

local RED = { sum = 0, max = 1, min = 2, sumsq = 3, absmax = 4, count_nan = 5 }
for name, op in pairs(RED) do
  local orig = Tensor[name]
  Tensor[name] = function(t, b)
    -- t:max(other) / t:min(other) stay the elementwise binary ops
    if b ~= nil and orig then return orig(t, b) end
    local r = dbl1()
    check(C.moda_tensor_reduce_all(t, op, r), name)
    return r[0]
  end
end
function Tensor.mean(t) return t:sum() / t:numel() end
function Tensor.norm(t) return math.sqrt(t:sumsq()) end

-- Same shape and every element equal.
function Tensor.equal(a, b)
  if not is_tensor(b) then return false end
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then return false end
  for i = 1, #sa do if sa[i] ~= sb[i] then return false end end
  if a:numel() == 0 then return true end
  local d = (a:to("float64") - b:to("float64")):absmax()
  return d == 0
end

-- |a - b| <= atol + rtol * |b| everywhere (NaN never close).
function Tensor.allclose(a, b, rtol, atol)
  M.check_tensor(b, "allclose", "b")
  rtol, atol = rtol or 1e-5, atol or 1e-8
  local a64, b64 = a:to("float64"), b:to("float64")
  local excess = (a64 - b64):abs() - (b64:abs() * rtol + atol)
  local m = excess:max()
  return m == m and m <= 0
end

-- ---- printing (torch7 style: the values, then [moda.FloatTensor of size 2x3]) ----

local function fmt_for(values)
  local maxabs, allint = 0, true
  for _, v in ipairs(values) do
    if v ~= v or v == math.huge or v == -math.huge then
    else
      maxabs = math.max(maxabs, math.abs(v))
      if v ~= math.floor(v) then allint = false end
    end
  end
  if allint and maxabs < 1e9 then
    local w = #string.format("%d", maxabs) + 1
    return function(v)
      if v ~= v or math.abs(v) == math.huge then return string.format("%" .. (w + 1) .. "s", tostring(v)) end
      return string.format("%" .. (w + 1) .. "d", v)
    end
  end
  if maxabs >= 1e5 or (maxabs > 0 and maxabs < 1e-3) then
    return function(v) return string.format("%12.4e", v) end
  end
  local w = #string.format("%d", math.floor(maxabs)) + 6
  return function(v) return string.format("%" .. w .. ".4f", v) end
end

local EDGE = 3          -- rows/cols shown at each end when a dim is summarized
local SUMMARIZE = 1000  -- tensors with more elements than this are summarized

local function kept(n, summarize)
  if not summarize or n <= 2 * EDGE then
    local r = {} for i = 1, n do r[i] = i end return r
  end
  local r = {}
  for i = 1, EDGE do r[#r + 1] = i end
  r[#r + 1] = false            -- the "..." gap
  for i = n - EDGE + 1, n do r[#r + 1] = i end
  return r
end

function Tensor.__tostring(t)
  local h = t:to("cpu"):to("float64"):contiguous()
  local shape = h:shape()
  local p = ffi.cast("double*", C.moda_tensor_data(h))
  local sizes = table.concat(shape, "x")
  local footer = string.format("[%s of size %s]", t:type(), #shape == 0 and "[]" or sizes)
  if #shape == 0 then return string.format("%g\n%s", p[0], footer) end
  local numel = h:numel()
  if numel == 0 then return footer end
  local summarize = numel > SUMMARIZE
  local strides = h:stride()
  -- collect the values that will be shown, to pick one format
  local shown = {}
  local lines = {}
  local function rowvals(base, d)        -- values of the last dim
    local r = {}
    for _, j in ipairs(kept(shape[d], summarize)) do
      if j then r[#r + 1] = p[base + (j - 1) * strides[d]] end
    end
    return r
  end
  local function gather(base, d)
    if d >= #shape - 1 then
      local rows = #shape == 1 and { 1 } or kept(shape[d], summarize)
      for _, i in ipairs(rows) do
        if i then
          for _, v in ipairs(rowvals(base + (#shape == 1 and 0 or (i - 1) * strides[d]), #shape)) do shown[#shown + 1] = v end
        end
      end
      return
    end
    for _, i in ipairs(kept(shape[d], summarize)) do if i then gather(base + (i - 1) * strides[d], d + 1) end end
  end
  gather(0, 1)
  local f = fmt_for(shown)
  local function emit_matrix(base)
    local last = #shape
    if last == 1 then           -- torch7 prints a vector as a column
      for _, j in ipairs(kept(shape[1], summarize)) do
        lines[#lines + 1] = j and f(p[base + (j - 1) * strides[1]]) or " ..."
      end
      return
    end
    local rows = kept(shape[last - 1], summarize)
    for _, i in ipairs(rows) do
      if not i then lines[#lines + 1] = " ..."
      else
        local rb = base + (last == 1 and 0 or (i - 1) * strides[last - 1])
        local parts = {}
        for _, j in ipairs(kept(shape[last], summarize)) do
          parts[#parts + 1] = j and f(p[rb + (j - 1) * strides[last]]) or "  ..."
        end
        lines[#lines + 1] = table.concat(parts, " ")
      end
    end
  end
  local function walk(base, d, prefix)
    if d > #shape - 2 then
      if #prefix > 0 then
        lines[#lines + 1] = "(" .. table.concat(prefix, ",") .. ",.,.) = "
      end
      emit_matrix(base)
      if #prefix > 0 then lines[#lines + 1] = "" end
      return
    end
    for _, i in ipairs(kept(shape[d], summarize)) do
      if not i then lines[#lines + 1] = "(...)"; lines[#lines + 1] = ""
      else
        prefix[#prefix + 1] = i
        walk(base + (i - 1) * strides[d], d + 1, prefix)
        prefix[#prefix] = nil
      end
    end
  end
  walk(0, 1, {})
  lines[#lines + 1] = footer
  return table.concat(lines, "\n")
end

-- ---- metatype ----

local mt = {
  __tostring = Tensor.__tostring,
  __len = function(t) return t.ndim > 0 and tonumber(t.sizes[0]) or 0 end,
  __add = function(a, b) return binary("add", a, b) end,
  __sub = function(a, b) return binary("sub", a, b) end,
  __mul = function(a, b) return binary("mul", a, b) end,
  __div = function(a, b) return binary("div", a, b) end,
  __pow = function(a, b) return binary("pow", a, b) end,
  __unm = function(a) return a:neg() end,
}

-- t[i]: for a 1-d tensor the number at i, otherwise the view t:select(1, i) (torch7).
-- String keys are methods and properties.
mt.__index = function(t, k)
  if type(k) == "number" then
    if t.ndim == 1 then return t:get({ k }) end
    return t:select(1, k)
  end
  local p = props[k]
  if p then return p(t) end
  return Tensor[k]
end

-- t[i] = v: a number goes into a 1-d tensor's element, or fills the selected slice; a tensor
-- is copied into the slice.
mt.__newindex = function(t, k, v)
  if type(k) ~= "number" then error("Tensor: cannot set field " .. tostring(k), 2) end
  if t.ndim == 1 and type(v) == "number" then t:set({ k }, v); return end
  local s = t:select(1, k)
  if type(v) == "number" then s:fill(v)
  elseif is_tensor(v) then s:copy(v)
  else error("Tensor: t[i] = v: expected a number or a Tensor, got " .. describe(v), 2) end
end

ffi.metatype("moda_tensor", mt)

return M
