-- moda: Mixture-of-Depths Attention from LuaJIT.
--   local moda = require("moda")
--   local q = moda.randn({1, 16, 4, 32})
-- See README.md for a tour and docs/ for the details.
local lib = require("moda.ffi")
local tensor = require("moda.tensor")

local moda = {
  C = lib.C,                 -- libmoda, with every declaration of c/*.h
  ffi = lib.ffi,
  library_path = lib.path,
  check = lib.check,         -- raises moda_last_error() when a status is nonzero
  Tensor = tensor.Tensor,    -- the method table of every tensor
  is_tensor = tensor.is_tensor,
  empty = tensor.empty, zeros = tensor.zeros, ones = tensor.ones, full = tensor.full,
  randn = tensor.randn, rand = tensor.rand, arange = tensor.arange, tensor = tensor.tensor,
  empty_like = tensor.empty_like, manual_seed = tensor.manual_seed,
}

function moda.set_num_threads(n)
  if type(n) ~= "number" then error("moda.set_num_threads: n: expected a number, got " .. type(n), 2) end
  lib.C.moda_set_num_threads(n)
end
function moda.get_num_threads() return lib.C.moda_get_num_threads() end

require("moda.io")(moda)                   -- moda.load, moda.save (safetensors)
require("moda.attention").install(moda)    -- moda.attention, moda.attention_backward
require("moda.cuda").install(moda)         -- moda.cuda.available(), GPU tensors (never raises)

return moda
