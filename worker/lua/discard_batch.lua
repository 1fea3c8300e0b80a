--! uses: common budget lines
-- Undo a batch's creation while it is still QUEUED and waiting in line (nothing sent it).
-- KEYS: [1] batch key, [2] due, [3..6] the cancel-all line, [7] active index
-- ARGV: [1..3] line args, [4] batch id, [5] the job that joined the line
-- Returns: 1 if removed.
local body = redis.call('GET', KEYS[1])
if not body or cjson.decode(body)['state'] ~= 'QUEUED' then return 0 end
if forget(line_at(KEYS, 3, ARGV, 1, KEYS[7]), ARGV[5]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
