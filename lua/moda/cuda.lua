-- moda.cuda: the CUDA backend (build/libmoda_cuda.so, `make cuda`), loaded only when present and
-- a GPU exists. Nothing here raises when there is no library or no GPU: moda.cuda.available()
-- is then false and moda.cuda.reason() says why.
--
--   require("moda.cuda").install(moda)      -- done by require("moda")
--   if moda.cuda.available() then local x = moda.randn({4, 4}):to("cuda") end
--
-- MODA_CUDA_LIB overrides the library path; otherwise it is the libmoda_cuda.so in the folder of
-- the loaded libmoda.so. Loading it registers the MODA_CUDA backend with the core, so tensors
-- with device = "cuda", :to("cuda"), :to("cpu") and moda.attention on GPU tensors work.
local ffi = require("ffi")
local lib = require("moda.ffi")

local M = {}

local state = { loaded = false, reason = "not loaded yet", C = nil }

local function load()
  -- Beside the core library that is loaded (libmoda_cuda.so registers its backend with the
  -- libmoda.so it links, found through $ORIGIN: a CUDA library from another folder would
  -- register with a second copy of the core, e.g. under the sanitizer build).
  local env = os.getenv("MODA_CUDA_LIB")
  local path = (env and env ~= "") and env or ((lib.path:match("^(.*)/[^/]*$") or ".") .. "/libmoda_cuda.so")
  local f = io.open(path, "rb")
  if not f then
    return nil, path .. " not found (run `make cuda`, or set MODA_CUDA_LIB)"
  end
  f:close()
  local ok, err = pcall(ffi.cdef, require("moda.cuda_cdef"))
  if not ok then return nil, "cannot declare the CUDA API: " .. tostring(err) end
  local okl, C = pcall(ffi.load, path)
  if not okl then return nil, "cannot load " .. path .. ": " .. tostring(C) end
  if C.moda_cuda_device_count() <= 0 then return nil, "no CUDA device (cudaGetDeviceCount = 0)" end
  if C.moda_cuda_init() ~= 0 then
    return nil, "moda_cuda_init: " .. ffi.string(lib.C.moda_last_error())
  end
  return C, path
end

do
  local C, info = load()
  if C then
    state.loaded, state.C, state.path, state.reason = true, C, info, nil
  else
    state.reason = info
  end
end

-- true when the library loaded and a GPU is there; never raises.
function M.available() return state.loaded end
-- Why available() is false (nil when it is true).
function M.reason() return state.reason end
-- The loaded library (an ffi namespace with the functions of cuda/moda_cuda.h), or nil.
function M.lib() return state.C end
function M.library_path() return state.path end

function M.device_count()
  if not state.loaded then return 0 end
  return tonumber(state.C.moda_cuda_device_count())
end

local function need(what)
  if not state.loaded then error("moda.cuda." .. what .. ": CUDA not available: " .. state.reason, 3) end
end

-- Waits for all work on the GPU; a CUDA error (e.g. from an earlier kernel) raises with its text.
function M.synchronize()
  need("synchronize")
  lib.check(state.C.moda_cuda_synchronize(), "moda.cuda.synchronize")
end

-- { name = "NVIDIA H100 80GB HBM3", cc = 90 }
function M.device_info()
  need("device_info")
  local name, cc = ffi.new("char[256]"), ffi.new("int[1]")
  lib.check(state.C.moda_cuda_device_info(name, 256, cc), "moda.cuda.device_info")
  return { name = ffi.string(name), cc = cc[0] }
end

-- Frees the library's backward workspace (it is reallocated on the next backward).
function M.release_workspace()
  if state.loaded then lib.check(state.C.moda_cuda_release_workspace(), "moda.cuda.release_workspace") end
end

-- moda.cuda = this module.
function M.install(moda)
  moda.cuda = M
  return moda
end

return M
