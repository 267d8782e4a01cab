-- moda.attention: Mixture-of-Depths attention (shared/moda/SPEC.md) on moda tensors.
--
--   local o, lse = moda.attention(q, k, v, kd, vd, opts)
--   local dq, dk, dv, dkd, dvd = moda.attention_backward(dout, q, k, v, kd, vd, o, lse, opts)
--   local fwd_name, bwd_name = moda.attention_kernels(q, k, v, kd, vd, opts)
--
-- q [B,T,Hq,d]; k, v [B,S,Hk,d]; kd, vd [B,T,L,Hk,d] or both nil (L = 0); o like q;
-- lse float32 [B,Hq,T]. opts (all optional):
--   mask  = "causal" (default) | "full"
--   depth = "token" (default) | "chunk";  chunk = C tokens (default 64) for depth = "chunk"
--   scale = softmax scale (default 1/sqrt(d))
--   impl  = "fast" (default) | "reference" (float64 loops: slow, the oracle)
--   deterministic = true: backends with atomics sum reproducibly (the CPU always does)
--   out   = preallocated outputs to write instead of allocating: {o=, lse=} for the forward,
--           {dq=, dk=, dv=, dkd=, dvd=} for the backward
-- Outputs are new contiguous tensors of q's dtype and device (lse: float32).
local ffi = require("ffi")
local lib = require("moda.ffi")
local tensor = require("moda.tensor")

local C = lib.C
local opts_ct = ffi.typeof("moda_attn_opts")

local CHOICES = {
  mask = { names = { "causal", "full" }, ids = { causal = 0, full = 1 } },
  depth = { names = { "token", "chunk" }, ids = { token = 0, chunk = 1 } },
  impl = { names = { "fast", "reference" }, ids = { fast = 0, reference = 1 } },
}
local KNOWN = { mask = true, depth = true, chunk = true, scale = true, impl = true,
                deterministic = true, out = true }

local M = {}

local function describe(x)
  if tensor.is_tensor(x) then return "a " .. x.dtype .. " tensor" end
  return "a " .. type(x)
end

-- The error level of the first caller outside this file (the user's call), however deep the
-- helper that raises it sits (error(msg, level) counts frames as debug.getinfo does).
local THIS_FILE = debug.getinfo(1, "S").source
local function user_level()
  local level = 2
  while true do
    local info = debug.getinfo(level + 1, "S")
    if info == nil or info.source ~= THIS_FILE then return level end
    level = level + 1
  end
end

local function fail(what, fmt, ...)
  error(what .. ": " .. string.format(fmt, ...), user_level())
end

local function need_tensor(what, x, name)
  if not tensor.is_tensor(x) then fail(what, "%s: expected a Tensor, got %s", name, describe(x)) end
end

local function opt_tensor(what, x, name)
  if x ~= nil and not tensor.is_tensor(x) then
    fail(what, "%s: expected a Tensor or nil, got %s", name, describe(x))
  end
end

-- Lua opts table -> moda_attn_opts.
local function c_opts(what, opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then fail(what, "opts: expected a table or nil, got %s", describe(opts)) end
  for key in pairs(opts) do
    if not KNOWN[key] then
      fail(what, "opts.%s: unknown option (known: chunk, depth, deterministic, impl, mask, out, scale)",
           tostring(key))
    end
  end
  local o = opts_ct()
  for name, choice in pairs(CHOICES) do
    local v = opts[name]
    if v == nil then v = choice.names[1] end
    if choice.ids[v] == nil then
      fail(what, "opts.%s: expected %s, got %s", name, '"' .. table.concat(choice.names, '" or "') .. '"',
           type(v) == "string" and '"' .. v .. '"' or describe(v))
    end
    o[name] = choice.ids[v]
  end
  local chunk = opts.chunk
  if chunk == nil then chunk = 64 end
  if type(chunk) ~= "number" or chunk ~= math.floor(chunk) or chunk < 1 or chunk > 2147483647 then
    fail(what, "opts.chunk: expected an integer >= 1, got %s", tostring(chunk))
  end
  o.chunk = chunk
  local scale = opts.scale
  if scale ~= nil and (type(scale) ~= "number" or not (scale > 0) or scale == math.huge) then
    fail(what, "opts.scale: expected a finite number > 0, got %s", tostring(scale))
  end
  o.scale = scale or 0
  o.deterministic = opts.deterministic and 1 or 0
  local out = opts.out
  if out ~= nil and type(out) ~= "table" then
    fail(what, "opts.out: expected a table of tensors, got %s", describe(out))
  end
  return o, out or {}
end

local function like(t, dtype)
  return tensor.empty(t:shape(), { dtype = dtype or t.dtype, device = t.device })
end

-- C messages start with their function's name; the Lua name replaces it.
local function check(what, status)
  if status ~= 0 then
    local msg = ffi.string(C.moda_last_error()):gsub("^moda_attn_[%w_]+: ", "")
    error(what .. ": " .. msg, user_level())
  end
end

-- The Lua-side checks of the inputs all three entry points take (shapes, dtypes and devices are
-- checked in C): q, k, v tensors, kd and vd both tensors or both nil.
local function check_inputs(what, q, k, v, kd, vd)
  need_tensor(what, q, "q")
  need_tensor(what, k, "k")
  need_tensor(what, v, "v")
  opt_tensor(what, kd, "kd")
  opt_tensor(what, vd, "vd")
  if (kd == nil) ~= (vd == nil) then
    fail(what, "%s: expected kd and vd both given or both nil, got %s only", kd and "vd" or "kd", kd and "kd" or "vd")
  end
end

function M.attention(q, k, v, kd, vd, opts)
  local what = "moda.attention"
  check_inputs(what, q, k, v, kd, vd)
  local copts, out = c_opts(what, opts)
  local o, lse = out.o, out.lse
  opt_tensor(what, o, "opts.out.o")
  opt_tensor(what, lse, "opts.out.lse")
  o = o or like(q)
  if lse == nil then
    -- [B, Hq, T] when q has the right rank; otherwise C reports q's rank first.
    local shape = q:dim() == 4 and { q:size(1), q:size(3), q:size(2) } or { 1 }
    lse = tensor.empty(shape, { dtype = "float32", device = q.device })
  end
  check(what, C.moda_attn_fwd(o, lse, q, k, v, kd, vd, copts))
  return o, lse
end

function M.attention_backward(dout, q, k, v, kd, vd, o, lse, opts)
  local what = "moda.attention_backward"
  need_tensor(what, dout, "dout")
  check_inputs(what, q, k, v, kd, vd)
  need_tensor(what, o, "o")
  need_tensor(what, lse, "lse")
  local copts, out = c_opts(what, opts)
  for _, name in ipairs({ "dq", "dk", "dv", "dkd", "dvd" }) do opt_tensor(what, out[name], "opts.out." .. name) end
  local dt = q.dtype
  local dq = out.dq or like(q)
  local dk = out.dk or like(k, dt)
  local dv = out.dv or like(v, dt)
  local dkd, dvd
  if kd ~= nil then
    dkd = out.dkd or like(kd, dt)
    dvd = out.dvd or like(vd, dt)
  end
  check(what, C.moda_attn_bwd(dq, dk, dv, dkd, dvd, dout, q, k, v, kd, vd, o, lse, copts))
  return dq, dk, dv, dkd, dvd
end

-- The names of the kernels moda.attention and moda.attention_backward would run for these
-- inputs and opts (opts.out is not looked at; outputs are taken to be ones moda allocates):
--   local fwd, bwd = moda.attention_kernels(q, k, v, kd, vd, { mask = "causal" })
--   --> "wgmma_d64_ws", "wgmma_d64_ws_dtok" on an H100; "cpu_fast", "cpu_fast" on the CPU
function M.attention_kernels(q, k, v, kd, vd, opts)
  local what = "moda.attention_kernels"
  check_inputs(what, q, k, v, kd, vd)
  local copts = c_opts(what, opts)
  local fwd, bwd = ffi.new("const char *[1]"), ffi.new("const char *[1]")
  check(what, C.moda_attn_kernel_names(fwd, bwd, q, k, v, kd, vd, copts))
  return ffi.string(fwd[0]), ffi.string(bwd[0])
end

-- require("moda.attention").install(moda) adds moda.attention, moda.attention_backward and
-- moda.attention_kernels.
function M.install(moda)
  moda.attention = M.attention
  moda.attention_backward = M.attention_backward
  moda.attention_kernels = M.attention_kernels
  return moda
end

return M
