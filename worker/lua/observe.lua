--! uses: learn
-- Learn from one sample (a request's span, an order's confirm time): see learn.lua.
-- KEYS: [1] samples list, [2] the learned value
-- ARGV: [1] sample ms, [2] samples kept, [3] floor, [4] ceiling, [5] headroom, [6] memory s,
--       [7] quantile (1: the largest)
-- Returns: the learned value in ms.
return learn(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
