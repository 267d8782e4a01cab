-- moda.ffi: loads libmoda.so and declares its C API (lua/moda/cdef.lua, generated from the C
-- headers by `make`). Returns { ffi = ffi, C = <the library>, path = <where it was found>,
-- root = <repo root or nil>, check = fn, errorf = fn }.
local ffi = require("ffi")

ffi.cdef(require("moda.cdef"))

-- The repository root, when running from a checkout: this file is <root>/lua/moda/ffi.lua.
local function repo_root()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) ~= "@" then return nil end
  local dir = src:sub(2):match("^(.*)/lua/moda/ffi%.lua$")
  if dir == nil and src:sub(2) == "lua/moda/ffi.lua" then dir = "." end
  return dir
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local root = repo_root()

-- MODA_LIB overrides; then the checkout's build/; then an installed copy on package.cpath
-- (luarocks installs it as moda/libmoda.so).
local function find_library(env_name, file, module_name)
  local env = os.getenv(env_name)
  if env and env ~= "" then return env end
  if root and exists(root .. "/build/" .. file) then return root .. "/build/" .. file end
  return package.searchpath(module_name, package.cpath)
end

local path = find_library("MODA_LIB", "libmoda.so", "moda.libmoda")
if not path then
  error("moda: cannot find libmoda.so: run `make` in the repository root, or set MODA_LIB", 2)
end
local ok, C = pcall(ffi.load, path)
if not ok then error("moda: cannot load " .. path .. ": " .. tostring(C), 2) end

local M = { ffi = ffi, C = C, path = path, root = root, find_library = find_library }

-- Raises the library's last error message when status ~= 0. `what` prefixes it.
function M.check(status, what)
  if status ~= 0 then
    local msg = ffi.string(C.moda_last_error())
    -- C messages already name their function; add `what` only when it says something new
    if what and msg:sub(1, #what + 1) ~= what .. ":" then msg = what .. ": " .. msg end
    error(msg, 3)
  end
end

-- error() with a formatted message, pointing at the caller of the API function.
function M.errorf(fmt, ...)
  error(string.format(fmt, ...), 3)
end

return M
