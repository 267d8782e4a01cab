-- tools/ab_summary.py, which turns the `ab` stage's rounds (tools/device_run.sh) into one table:
-- every round's times stay visible and the ratios are the rounds' means against the first
-- variant's, per shape.
local tools = require("support.tools")

local ab_txt = [[
=== - (round 1)
-- DeiT-Tiny L=22: CUDA time per fwd+bwd (3 runs), total 0.570 ms: fwd_wgmma_ws_kernel 0.173
DeiT-Tiny L=22       wgmma_d64_ws3     0.200     65     0.500     69       nan       nan
LM-64 L=126          wgmma_d64_ws3     0.400     90     1.400     98       nan       nan
=== MODA_CUDA_FWD_FLAGS=4265 (round 1)
DeiT-Tiny L=22       wgmma_d64_split   0.220     47     0.560     61       nan       nan
LM-64 L=126          wgmma_d64_split   0.480     80     1.500     93       nan       nan
=== - (round 2)
DeiT-Tiny L=22       wgmma_d64_ws3     0.200     65     0.500     69       nan       nan
LM-64 L=126          wgmma_d64_ws3     0.400     90     1.400     98       nan       nan
=== MODA_CUDA_FWD_FLAGS=4265 (round 2)
DeiT-Tiny L=22       wgmma_d64_split   0.220     47     0.540     61       nan       nan
LM-64 L=126          wgmma_d64_split   0.520     80     1.400     93       nan       nan
]]

local function summary(text)
  return tools.run_on("python3 tools/ab_summary.py", text)
end

describe("tools/ab_summary.py", function()
  local python = tools.have_python()

  it("lists every round and the mean ratios against the first variant, per shape", function()
    if not python then pending("python3 not found") return end
    local out, rc = summary(ab_txt)
    assert.are.equal(0, rc, out)
    -- DeiT-Tiny: forward 0.220 / 0.200 = 1.100, f+b mean 0.550 / 0.500 = 1.100
    assert.truthy(out:find("MODA_CUDA_FWD_FLAGS=4265%s+wgmma_d64_split%s+0%.220 0%.220%s+0%.560 0%.540%s+1%.100%s+1%.100"), out)
    -- LM-64: forward mean 0.500 / 0.400 = 1.250, f+b mean 1.450 / 1.400 = 1.036
    assert.truthy(out:find("MODA_CUDA_FWD_FLAGS=4265%s+wgmma_d64_split%s+0%.480 0%.520%s+1%.500 1%.400%s+1%.250%s+1%.036"), out)
    assert.truthy(out:find("-%s+wgmma_d64_ws3%s+0%.400 0%.400%s+1%.400 1%.400%s+1%.000%s+1%.000"), out)
  end)

  it("fails on a file without rounds", function()
    if not python then pending("python3 not found") return end
    local out, rc = summary("DeiT-Tiny L=22  wgmma_d64_ws3  0.200  65  0.500  69\n")
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("no '=== VARIANT (round N)' lines", 1, true), out)
  end)
end)
