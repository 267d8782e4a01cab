-- Random calls of moda.attention and moda.attention_backward, about half of them malformed: ranks,
-- sizes, dtypes, devices, strides and options drawn at random around a valid call. Each call must
-- either raise a Lua error that names the function, or return outputs of the right shapes with
-- no NaN or infinity in them. A crash ends the process, which busted reports as a failure.
--   local fuzz = require("support.attention_fuzz")
--   local bad = fuzz.run(moda, { calls = 300, seed = s, devices = { "cpu", "cuda" } })
-- returns nil, or a message naming the call that broke the rule (with the seed to replay it).
local M = {}

local DTYPES = { "float32", "float64", "float16", "bfloat16" }

local function pick(list) return list[math.random(#list)] end

local function shape_str(t) return t == nil and "nil" or ("[" .. table.concat(t:shape(), ",") .. "] " .. t.dtype .. " " .. t.device) end

-- A random tensor of `shape` (one size sometimes off by one), dtype and device mostly `base`'s,
-- sometimes with a transposed (non-contiguous) pair of leading dims.
local function tensor(moda, shape, base)
  local s = {}
  for i, n in ipairs(shape) do s[i] = n end
  if math.random(40) == 1 and #s > 0 then
    local i = math.random(#s)
    s[i] = math.max(0, s[i] + pick({ -1, 1 }))
  end
  if math.random(60) == 1 then s[#s + 1] = 1 end  -- a wrong rank
  local dtype = math.random(25) == 1 and pick(DTYPES) or base.dtype
  local device = math.random(25) == 1 and pick(base.devices) or base.device
  local t = moda.randn(s, { dtype = "float32" }):to({ dtype = dtype, device = device })
  if math.random(15) == 1 and #s >= 2 and s[1] == s[2] then t = t:transpose(1, 2) end
  return t
end

local function finite(t)
  local x = t:to({ dtype = "float64", device = "cpu" })
  if x:count_nan() > 0 then return false end
  return x:numel() == 0 or x:absmax() < math.huge
end

-- nil when err is a message that names fname ("fname: ..."), else what is wrong
local function unnamed(err, fname, what)
  if type(err) ~= "string" or not err:find(fname .. ": ", 1, true) then
    return string.format("%s: an error that does not name %s: %s", what, fname, tostring(err))
  end
end

local function check_shapes(got, want, n, what)  -- (n: the lists hold nils)
  for i = 1, n do
    local t, g = want[i], got[i]
    if t == nil then
      if g ~= nil then return what .. ": output " .. i .. " should be nil" end
    elseif g == nil then
      return what .. ": output " .. i .. " is nil"
    else
      local a, b = table.concat(g:shape(), ","), table.concat(t:shape(), ",")
      if a ~= b then return string.format("%s: output %d has shape [%s], expected [%s]", what, i, a, b) end
      if not finite(g) then return what .. ": output " .. i .. " has NaN or infinity" end
    end
  end
end

-- (opts.stats, a table: counts of the calls that ran forward and backward, for the caller to
-- check that the fuzz reached valid calls at all)
function M.run(moda, opts)
  local seed = opts.seed or os.time()
  local stats = opts.stats or {}
  stats.fwd_ok, stats.bwd_ok, stats.calls = 0, 0, 0
  math.randomseed(seed)
  local devices = opts.devices or { "cpu" }
  for call = 1, opts.calls or 200 do
    local B, T, Hk, G = math.random(0, 2), math.random(0, 9), math.random(1, 2), math.random(1, 3)
    local S = math.random(10) == 1 and math.random(0, 3) or T + math.random(0, 4)
    local L = pick({ 0, 0, 1, 2, 5 })
    local d = pick(opts.head_dims or { 1, 8, 16, 32, 40, 64, 64, 128, 256, 300 })
    local base = { dtype = pick(DTYPES), device = pick(devices), devices = devices }
    local q = tensor(moda, { B, T, Hk * G, d }, base)
    local k, v = tensor(moda, { B, S, Hk, d }, base), tensor(moda, { B, S, Hk, d }, base)
    local kd, vd
    if L > 0 then kd, vd = tensor(moda, { B, T, L, Hk, d }, base), tensor(moda, { B, T, L, Hk, d }, base) end
    if math.random(25) == 1 then kd = nil end
    local o_opts = {
      mask = math.random(8) == 1 and "diagonal" or pick({ "causal", "full" }),
      depth = pick({ "token", "token", "chunk" }),
      chunk = math.random(10) == 1 and pick({ 0, -2, 2.5 }) or pick({ 1, 3, 64 }),
      scale = math.random(10) == 1 and pick({ 0, -1, 0 / 0 }) or nil,
      deterministic = pick({ true, false }),
    }
    local what = string.format("call %d (seed %d): q %s, k %s, v %s, kd %s, vd %s, mask %s depth %s chunk %s",
      call, seed, shape_str(q), shape_str(k), shape_str(v), shape_str(kd), shape_str(vd), o_opts.mask,
      o_opts.depth, tostring(o_opts.chunk))
    local ok, o, lse = pcall(moda.attention, q, k, v, kd, vd, o_opts)
    stats.calls = stats.calls + 1
    if not ok then
      local bad = unnamed(o, "moda.attention", what)
      if bad then return bad end
    else
      stats.fwd_ok = stats.fwd_ok + 1
      local bad = check_shapes({ o }, { q }, 1, what)
      if bad then return bad end
      local want = { q:size(1), q:size(3), q:size(2) }
      if lse.dtype ~= "float32" or table.concat(lse:shape(), ",") ~= table.concat(want, ",") then
        return what .. ": lse " .. shape_str(lse)
      end
      -- the backward on the forward's outputs, dout sometimes malformed too
      local dout = tensor(moda, q:shape(), { dtype = q.dtype, device = q.device, devices = devices })
      local okb, dq, dk, dv, dkd, dvd = pcall(moda.attention_backward, dout, q, k, v, kd, vd, o, lse, o_opts)
      if not okb then
        bad = unnamed(dq, "moda.attention_backward", what .. " (backward)")
        if bad then return bad end
      else
        stats.bwd_ok = stats.bwd_ok + 1
        bad = check_shapes({ dq, dk, dv, dkd, dvd }, { q, k, v, kd, vd }, 5, what .. " (backward)")
        if bad then return bad end
      end
    end
  end
  if devices[2] and moda.cuda.available() then moda.cuda.synchronize() end
  return nil
end

return M
