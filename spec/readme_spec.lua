-- The README's REPL session works as printed: each "> " line runs in one shared environment
-- (a leading "=" prints the values, as in the LuaJIT REPL) and what it prints must equal the
-- lines shown after it.
describe("README REPL session", function()
  it("prints what the README shows", function()
    local f = assert(io.open("README.md", "r"))
    local text = f:read("*a")
    f:close()
    local block = text:match("\n%$ LUA_PATH=[^\n]*\n(.-)\n```")
    assert.is_not_nil(block, "README has no REPL session block")
    local env = setmetatable({}, { __index = _G })
    local printed = {}
    env.print = function(...)
      local parts = {}
      for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
      for line in (table.concat(parts, "\t") .. "\n"):gmatch("([^\n]*)\n") do printed[#printed + 1] = line end
    end
    local expected = {}
    local ran = 0
    for line in (block .. "\n"):gmatch("([^\n]*)\n") do
      local code = line:match("^> (.*)$")
      if code then
        if code:sub(1, 1) == "=" then code = "print(" .. code:sub(2) .. ")" end
        local chunk = assert(loadstring(code, "README"))
        setfenv(chunk, env)
        chunk()
        ran = ran + 1
      else
        expected[#expected + 1] = line
      end
    end
    assert.is_true(ran >= 8)
    assert.same(expected, printed)
  end)
end)
