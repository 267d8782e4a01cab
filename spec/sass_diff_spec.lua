-- tools/sass_diff.py, which says which kernels of two builds have the same SASS (a refactor that
-- leaves a timed kernel's SASS unchanged needs no new device call; one that moves it does).
local tools = require("support.tools")

-- Two builds' `cuobjdump -sass` as cuobjdump prints them: k_same differs only in its addresses,
-- encodings and the anonymous-namespace hashes of its name and call target; k_moved has one
-- instruction changed; k_new is in B only; the sm_80 copy of k_same is identical.
local build_a = [[
	arch = sm_80
		Function : _ZN9moda_cuda50_GLOBAL__N__e900a34a_17_attn_cu_722dd7976k_sameEv
        /*0000*/                   MOV R1, c[0x0][0x28] ;                  /* 0x00000a0000017a02 */
        /*0010*/                   EXIT ;                                  /* 0x000000000000794d */
	arch = sm_90a
		Function : _ZN9moda_cuda50_GLOBAL__N__e900a34a_17_attn_cu_722dd7976k_sameEv
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
        /*0010*/                   CALL.REL.NOINC `(_ZN9moda_cuda50_GLOBAL__N__e900a34a_17_attn_cu_722dd7974helpEv) ;  /* 0x0000000000007944 */
        /*0020*/                   EXIT ;                                  /* 0x000000000000794d */
		Function : k_moved
        /*0000*/                   IMAD.MOV.U32 R2, RZ, RZ, RZ ;           /* 0x000000ffff027224 */
        /*0010*/                   EXIT ;                                  /* 0x000000000000794d */
]]
local build_b = [[
	arch = sm_80
		Function : _ZN9moda_cuda50_GLOBAL__N__1719373e_17_attn_cu_4f00aa116k_sameEv
        /*0000*/                   MOV R1, c[0x0][0x28] ;                  /* 0x00000a0000017a02 */
        /*0010*/                   EXIT ;                                  /* 0x000000000000794d */
	arch = sm_90a
		Function : _ZN9moda_cuda50_GLOBAL__N__1719373e_17_attn_cu_4f00aa116k_sameEv
        /*0100*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b99 */
        /*0110*/                   CALL.REL.NOINC `(_ZN9moda_cuda50_GLOBAL__N__1719373e_17_attn_cu_4f00aa114helpEv) ;  /* 0x0000000000007955 */
        /*0120*/                   EXIT ;                                  /* 0x000000000000794d */
		Function : k_moved
        /*0000*/                   MOV R2, RZ ;                            /* 0x000000ff00027202 */
        /*0010*/                   EXIT ;                                  /* 0x000000000000794d */
		Function : k_new
        /*0000*/                   EXIT ;                                  /* 0x000000000000794d */
]]

local function diff(a, b, regex)
  return tools.run_on("python3 tools/sass_diff.py", {a, b}, regex and ("'" .. regex .. "'"))
end

describe("tools/sass_diff.py", function()
  local python = tools.have_python()

  it("ignores addresses, encodings and namespace hashes, and reports a changed instruction", function()
    if not python then pending("python3 not found") return end
    local out, rc = diff(build_a, build_b)
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("sass%-diff: 2 identical, 1 differ, 0 only in A, 1 only in B"), out)
    assert.truthy(out:find("differs: sm_90a k_moved %(2 changed lines; 2 %-> 2 instructions%)"), out)
    assert.truthy(out:find("only in B: sm_90a k_new"), out)
    assert.falsy(out:find("k_same"), out)
  end)

  it("passes a build against itself, and keeps the kernels a regex names", function()
    if not python then pending("python3 not found") return end
    local out, rc = diff(build_a, build_a)
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("sass%-diff: 3 identical, 0 differ"), out)
    out, rc = diff(build_a, build_b, "k_same")
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("sass%-diff: 2 identical, 0 differ, 0 only in A, 0 only in B"), out)
  end)

  it("refuses a file without instructions", function()
    if not python then pending("python3 not found") return end
    local out, rc = diff("no sass here\n", build_a)
    assert.are.equal(2, rc, out)
    assert.truthy(out:find("no instructions"), out)
  end)
end)
