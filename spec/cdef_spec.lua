-- The Lua FFI declarations are generated from the C headers (one source of truth): the committed
-- lua/moda/cdef.lua and cuda_cdef.lua must be exactly what tools/gen_cdef.lua makes of them.
local function generated(headers)
  local p = assert(io.popen("luajit tools/gen_cdef.lua " .. headers))
  local text = p:read("*a")
  p:close()
  return text
end

local function read(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("*a")
  f:close()
  return text
end

describe("generated FFI declarations", function()
  it("lua/moda/cdef.lua matches c/moda.h, c/moda_attn.h, c/moda_io.h", function()
    assert.equal(generated("c/moda.h c/moda_attn.h c/moda_io.h"), read("lua/moda/cdef.lua"))
  end)
  it("lua/moda/cuda_cdef.lua matches cuda/moda_cuda.h", function()
    assert.equal(generated("cuda/moda_cuda.h"), read("lua/moda/cuda_cdef.lua"))
  end)
end)
