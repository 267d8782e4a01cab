-- Helpers for the specs that run the repository's Python tools (tools/*.py) on hand-written inputs.
local M = {}

function M.have_python()
  local p = io.popen("python3 -c 'print(1)' 2>/dev/null")
  local out = p and p:read("*a") or ""
  if p then p:close() end
  return out:match("1") ~= nil
end

-- Writes `text` to a fresh temporary file; returns its path (the caller removes it).
function M.write_temp(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- Runs `cmd` in a shell; returns its output (stdout and stderr) and its exit status.
function M.run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  return out, tonumber(out:match("rc=(%d+)%s*$"))
end

-- Runs `cmd` with the paths of temporary files holding `texts` (a string, or a list of them)
-- appended, then `suffix` (more arguments, optional); returns as run does.
function M.run_on(cmd, texts, suffix)
  if type(texts) == "string" then texts = {texts} end
  local paths = {}
  for i, text in ipairs(texts) do paths[i] = M.write_temp(text) end
  local out, rc = M.run(cmd .. " " .. table.concat(paths, " ") .. (suffix and (" " .. suffix) or ""))
  for _, path in ipairs(paths) do os.remove(path) end
  return out, rc
end

return M
