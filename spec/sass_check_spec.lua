-- tools/sass_rs_check.py, the static check `make cuda-sass-check` runs on the built CUDA library,
-- on small hand-written SASS listings: each of its two signatures must be caught, and clean code
-- must pass. (It guards against two ptxas faults met on the device: session 9's RS-wgmma A
-- fragment reached by two kinds of writer, session 18's memory descriptor in an odd uniform
-- register.)

local tools = require("support.tools")

-- runs the checker on `listing`; returns its output and exit status
local function check(listing)
  -- as cuobjdump: a header before the first function
  return tools.run_on("python3 tools/sass_rs_check.py", "\n\tcode for sm_90a\n" .. listing)
end

-- an RS HGMMA whose A fragment (R8..R11) is loaded once by LDSM before the loop
local clean = [[
        Function : k_clean
        /*0000*/                   LDSM.16.M88.4 R8, [R2] ;
        /*0010*/                   LDGSTS.E.BYPASS.128 [R27+UR0], desc[UR16][R24.64] ;
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, R8, gdesc[UR4], R24 ;
        /*0030*/               @P0 BRA 0x20 ;
        /*0040*/                   EXIT ;
]]
-- the same, but a P fragment packed inside the loop lands in R8 and the back edge brings it to
-- the HGMMA: two kinds of writer reach its A operand
local two_writers = [[
        Function : k_two_writers
        /*0000*/                   LDSM.16.M88.4 R8, [R2] ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, R8, gdesc[UR4], R24 ;
        /*0020*/                   F2FP.BF16.F32.PACK_AB R8, R1, R0 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   EXIT ;
]]
-- a hinted cp.async whose 64-bit descriptor sits in UR1
local odd_desc = [[
        Function : k_odd_desc
        /*0000*/               @P0 LDGSTS.E.BYPASS.128 [R27+UR0], desc[UR1][R24.64] ;
        /*0010*/                   EXIT ;
]]

describe("tools/sass_rs_check.py", function()
  local python = tools.have_python()

  it("passes clean code and counts its descriptors (desc[] and gdesc[])", function()
    if not python then pending("python3 not found") return end
    local out, rc = check(clean)
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("OK      k_clean", 1, true), out)
    assert.truthy(out:find("desc: 2 descriptors, 0 odd", 1, true), out)
  end)

  it("flags an RS-wgmma A fragment reached by two kinds of writer", function()
    if not python then pending("python3 not found") return end
    local out, rc = check(clean .. two_writers)
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("SUSPECT k_two_writers", 1, true), out)
    assert.truthy(out:find("F2FP", 1, true), out)
    assert.truthy(out:find("OK      k_clean", 1, true), out)
  end)

  it("flags a memory descriptor in an odd uniform register", function()
    if not python then pending("python3 not found") return end
    local out, rc = check(clean .. odd_desc)
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("SUSPECT-DESC k_odd_desc", 1, true), out)
    assert.truthy(out:find("UR1", 1, true), out)
    assert.truthy(out:find("desc: 3 descriptors, 1 odd", 1, true), out)
  end)
end)
