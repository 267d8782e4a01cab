-- A tour of moda from Lua: tensors, one MoDA attention call, its gradients, and a check that
-- depth keys really take part in the softmax. Run from anywhere: luajit examples/repl_demo.lua
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path

local moda = require("moda")
moda.manual_seed(0)

print("libmoda: " .. moda.library_path .. ", " .. moda.get_num_threads() .. " threads")
print(moda.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }))

-- One layer's MoDA call: B sequences of T tokens, Hq query heads sharing Hk KV heads (GQA),
-- and L depth entries per token written by earlier layers.
local B, T, Hq, Hk, L, d = 2, 64, 8, 2, 6, 32
local q = moda.randn({ B, T, Hq, d })
local k, v = moda.randn({ B, T, Hk, d }), moda.randn({ B, T, Hk, d })
local kd, vd = moda.randn({ B, T, L, Hk, d }), moda.randn({ B, T, L, Hk, d })

local t0 = os.clock()
local o, lse = moda.attention(q, k, v, kd, vd, { mask = "causal" })
print(string.format("moda.attention: o %s, lse %s (%.2f ms cpu)", table.concat(o:shape(), "x"),
  table.concat(lse:shape(), "x"), (os.clock() - t0) * 1e3))

-- The fast kernel against the float64 reference.
local ref = moda.attention(q:double(), k:double(), v:double(), kd:double(), vd:double(), { impl = "reference" })
print(string.format("fast vs reference: max |diff| = %.2e", (o:double() - ref):absmax()))

-- Depth entries compete in the same softmax: the share of attention mass they take is
-- 1 - exp(lse_sequence_only - lse_joint), per query and head.
local _, lse_seq = moda.attention(q, k, v, nil, nil)
local depth_share = 1 - (lse_seq - lse):exp()
print(string.format("attention mass on the %d depth entries: mean %.3f (early tokens see few sequence keys: %.3f at t=1)",
  L, depth_share:mean(), depth_share:narrow(3, 1, 1):mean()))

-- Gradients of every input, depth rows included.
local dq, dk, dv, dkd, dvd = moda.attention_backward(moda.ones(o:shape()), q, k, v, kd, vd, o, lse)
print(string.format("grad norms: dq %.3f dk %.3f dv %.3f dkd %.3f dvd %.3f", dq:norm(), dk:norm(), dv:norm(),
  dkd:norm(), dvd:norm()))
