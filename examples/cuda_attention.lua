-- MoDA on the GPU from Lua: the same calls as on the CPU, on tensors that live on the device.
-- Forward and backward of one LM block in bfloat16, the kernels that ran, and the errors against
-- the float64 CPU path on the same (bf16-rounded) inputs. Run from anywhere:
--   luajit examples/cuda_attention.lua
-- Where there is no GPU (or no build/libmoda_cuda.so: `make cuda`) it says why and stops.
-- dofile'd, it returns { kernels = {fwd, bwd}, errors = {o = ..., dq = ...} } (spec/cuda_attention_spec.lua).
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path

local moda = require("moda")
if not moda.cuda.available() then
  print("moda.cuda is not available here: " .. moda.cuda.reason())
  return nil
end
local info = moda.cuda.device_info()
print(string.format("GPU: %s (sm_%d); %s", info.name, info.cc, moda.cuda.library_path()))

-- B sequences of T tokens, Hq query heads on Hk KV heads (GQA), L depth rows per token from the
-- earlier layers. Made on the CPU with a seed, then moved: :to{} converts and copies in one call.
moda.manual_seed(0)
local B, T, Hq, Hk, L, d = 2, 384, 8, 2, 12, 64
local host = {
  q = moda.randn({ B, T, Hq, d }),
  k = moda.randn({ B, T, Hk, d }), v = moda.randn({ B, T, Hk, d }),
  kd = moda.randn({ B, T, L, Hk, d }), vd = moda.randn({ B, T, L, Hk, d }),
  dout = moda.randn({ B, T, Hq, d }),
}
local gpu = {}
for name, t in pairs(host) do gpu[name] = t:to({ dtype = "bfloat16", device = "cuda" }) end

local opts = { mask = "causal" }
local fwd_name, bwd_name = moda.attention_kernels(gpu.q, gpu.k, gpu.v, gpu.kd, gpu.vd, opts)
print("kernels: forward " .. fwd_name .. ", backward " .. bwd_name)

local o, lse = moda.attention(gpu.q, gpu.k, gpu.v, gpu.kd, gpu.vd, opts)
local g = { moda.attention_backward(gpu.dout, gpu.q, gpu.k, gpu.v, gpu.kd, gpu.vd, o, lse, opts) }
moda.cuda.synchronize()  -- a kernel's error, if any, is raised here with CUDA's message
print(string.format("o %s %s on %s, lse %s %s", table.concat(o:shape(), "x"), o.dtype, o.device,
  table.concat(lse:shape(), "x"), lse.dtype))

-- The CPU in float64 on the very values the GPU saw (its bf16 inputs, widened).
local cpu = {}
for name, t in pairs(gpu) do cpu[name] = t:to({ dtype = "float64", device = "cpu" }) end
local ro, rlse = moda.attention(cpu.q, cpu.k, cpu.v, cpu.kd, cpu.vd, opts)
local r = { moda.attention_backward(cpu.dout, cpu.q, cpu.k, cpu.v, cpu.kd, cpu.vd, ro, rlse, opts) }

-- max |gpu - cpu| / max |cpu| per tensor (bf16 outputs: ~1e-3 expected; SPEC section 5 allows 1e-2)
local function rel(x, ref)
  return (x:to({ dtype = "float64", device = "cpu" }) - ref):absmax() / ref:absmax()
end
local errors = { o = rel(o, ro), lse = rel(lse, rlse:to("float64")) }
for i, name in ipairs({ "dq", "dk", "dv", "dkd", "dvd" }) do errors[name] = rel(g[i], r[i]) end
local line = {}
for _, name in ipairs({ "o", "lse", "dq", "dk", "dv", "dkd", "dvd" }) do
  line[#line + 1] = string.format("%s %.1e", name, errors[name])
end
print("relative error against the float64 CPU: " .. table.concat(line, ", "))
return { kernels = { fwd_name, bwd_name }, errors = errors }
