-- busted output handler: the usual terminal report, then one plain closing line
-- "N passed, N failed, N skipped" (failed counts failures and errors) so CI can count the tests.
-- Skipped tests are busted `pending(...)` calls; their reasons are printed by the terminal report.
return function(options)
  local busted = require("busted")
  local inner = require("busted.outputHandlers.plainTerminal")(options)
  local function summary()
    io.write(string.format("\n%d passed, %d failed, %d skipped\n", inner.successesCount,
      inner.failuresCount + inner.errorsCount, inner.pendingsCount))
    io.flush()
    return nil, true
  end
  -- subscribed after the terminal handler's own suite-end, so it prints last
  busted.subscribe({ "suite", "end" }, summary)
  return inner
end
