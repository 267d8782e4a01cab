-- moda.io: moda.load / moda.save for safetensors files (the C side is c/safetensors.c).
--
--   local tensors, metadata = moda.load("model.safetensors")   -- name -> Tensor, string -> string
--   moda.save("model.safetensors", { w = w, b = b }, { format = "pt" })
--
-- The module returns install(moda), which adds load and save to the moda table. Tensors come
-- back on the CPU in the file's dtype; any tensor can be saved (any strides, cpu or cuda). Saves
-- are atomic: the file is written under a temporary name and renamed into place.
local lib = require("moda.ffi")
local tensor = require("moda.tensor")
local ffi, C, check = lib.ffi, lib.C, lib.check

local list_out_ct = ffi.typeof("moda_tensor_list*[1]")
local names_ct = ffi.typeof("const char*[?]")
local tensors_ct = ffi.typeof("const moda_tensor*[?]")

local function describe(x)
  if tensor.is_tensor(x) then return "a " .. x.dtype .. " tensor" end
  return "a " .. type(x)
end

-- ---- metadata: a flat JSON object of strings ----

-- Escapes as the reference writer (serde_json) and Python's json do, so a file saved here
-- matches one written there byte for byte: short escapes where JSON has them, \u00XX for other
-- control characters, everything else (UTF-8 included) as is.
local SHORT = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                ["\r"] = "\\r", ["\t"] = "\\t" }
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return SHORT[c] or (c:byte() < 0x20 and string.format("\\u%04x", c:byte()) or c)
  end) .. '"'
end

local function encode_metadata(meta)
  local keys = {}
  for k, v in pairs(meta) do
    if type(k) ~= "string" then
      error(string.format("moda.save: metadata: keys must be strings, got %s", describe(k)), 3)
    end
    if type(v) ~= "string" then
      error(string.format("moda.save: metadata[%q]: expected a string, got %s", k, describe(v)), 3)
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)   -- a stable file
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = json_string(k) .. ":" .. json_string(meta[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xc0 + math.floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then
    return string.char(0xe0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return string.char(0xf0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
                     0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local UNESCAPE = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

-- Decodes the metadata JSON the C reader returns. The reader has already checked that it is an
-- object of strings (escapes and surrogate pairs included), so this only has to walk it.
local function decode_metadata(text)
  local pos, out = 1, {}
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local function str()
    pos = pos + 1                      -- the opening quote
    local parts = {}
    while true do
      local s, e = text:find('["\\]', pos)
      parts[#parts + 1] = text:sub(pos, s - 1)
      if text:sub(s, s) == '"' then pos = e + 1 break end
      local c = text:sub(s + 1, s + 1)
      if c == "u" then
        local cp = tonumber(text:sub(s + 2, s + 5), 16)
        pos = s + 6
        if cp >= 0xd800 and cp <= 0xdbff then   -- a surrogate pair: \uD8xx\uDCxx
          local lo = tonumber(text:sub(pos + 2, pos + 5), 16)
          cp = 0x10000 + (cp - 0xd800) * 0x400 + (lo - 0xdc00)
          pos = pos + 6
        end
        parts[#parts + 1] = utf8_char(cp)
      else
        parts[#parts + 1] = UNESCAPE[c]
        pos = s + 2
      end
    end
    return table.concat(parts)
  end
  ws()
  pos = pos + 1                        -- '{'
  ws()
  while text:sub(pos, pos) == '"' do
    local k = str()
    ws(); pos = pos + 1; ws()          -- ':'
    out[k] = str()
    ws()
    if text:sub(pos, pos) == "," then pos = pos + 1; ws() end
  end
  return out
end

-- ---- load / save ----

local function load(path)
  if type(path) ~= "string" then
    error("moda.load: path: expected a string, got " .. describe(path), 2)
  end
  local out = list_out_ct()
  check(C.moda_safetensors_read(out, path), "moda.load")
  local list = ffi.gc(out[0], C.moda_tensor_list_free)   -- freed even if something below fails
  local result = {}
  for i = 0, tonumber(C.moda_tensor_list_size(list)) - 1 do
    local name = ffi.string(C.moda_tensor_list_name(list, i))
    local t = C.moda_tensor_list_get(list, i)
    if t == nil then check(1, "moda.load") end     -- only on out of memory: the C message says
    result[name] = tensor.wrap_allocated(t)
  end
  local meta_json = C.moda_tensor_list_metadata(list)
  local meta = meta_json ~= nil and decode_metadata(ffi.string(meta_json)) or nil
  C.moda_tensor_list_free(ffi.gc(list, nil))           -- now, rather than at the next GC
  return result, meta
end

local function save(path, tensors, metadata)
  if type(path) ~= "string" then
    error("moda.save: path: expected a string, got " .. describe(path), 2)
  end
  if type(tensors) ~= "table" or tensor.is_tensor(tensors) then
    error("moda.save: tensors: expected a table of name -> Tensor, got " .. describe(tensors), 2)
  end
  if metadata ~= nil and type(metadata) ~= "table" then
    error("moda.save: metadata: expected a table of strings or nil, got " .. describe(metadata), 2)
  end
  local names = {}
  for k, v in pairs(tensors) do
    if type(k) ~= "string" then
      error(string.format("moda.save: tensors: names must be strings, got %s (%s)", describe(k), tostring(k)), 2)
    end
    if k:find("\0", 1, true) then
      error(string.format("moda.save: tensors[%q]: a name cannot contain a NUL byte", k), 2)
    end
    if not tensor.is_tensor(v) then
      error(string.format("moda.save: tensors[%q]: expected a Tensor, got %s", k, describe(v)), 2)
    end
    names[#names + 1] = k
  end
  table.sort(names)   -- a stable file whatever order pairs() gives
  local n = #names
  local cnames, ctensors = names_ct(math.max(n, 1)), tensors_ct(math.max(n, 1))
  for i, k in ipairs(names) do
    cnames[i - 1] = k            -- points into the Lua string, which `names` keeps alive
    ctensors[i - 1] = tensors[k]
  end
  local meta_json = metadata and encode_metadata(metadata) or nil
  check(C.moda_safetensors_write(path, n, cnames, ctensors, meta_json), "moda.save")
end

return function(moda)
  moda.load = load
  moda.save = save
  return moda
end
