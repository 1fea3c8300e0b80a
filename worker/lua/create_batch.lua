--! uses: common budget lines
-- Create a batch record with its event and sweeper watch, and put it in line: the account's
-- cancel-all line, or (a batch scoped to an owner) its open-orders line, to read them first.
-- KEYS: [1] batch key, [2] events, [3] due, [4..7] the line, [8] active index, [9] wake
-- ARGV: [1] TTL s, [2] record JSON, [3] events maxlen, [4] batch id, [5] account,
--       [6] exchange, [7] symbol or "", [8] priority, [9] rank, [10] requested ms,
--       [11] watch-at ms, [12..14] line args, [15] owner, [16] the job that joins the line
-- Returns: 1 if created, 0 if the id existed.
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'batch', 'batch_id', ARGV[4],
  'account', ARGV[5], 'exchange', ARGV[6], 'symbol', ARGV[7], 'priority', ARGV[8],
  'state', 'QUEUED', 'previous', '', 'at', ARGV[10], 'orders', '0', 'error_code', '',
  'owner', ARGV[15])
redis.call('ZADD', KEYS[3], tonumber(ARGV[11]), ARGV[4])
local now = clock()
join(line_at(KEYS, 4, ARGV, 12, KEYS[8]), ARGV[16], tonumber(ARGV[9]), now, tonumber(ARGV[10]), 0,
  ARGV[15], now)
wake(KEYS[9])
return 1
