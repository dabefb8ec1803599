-- One view's flush, applied atomically: see `APPLY_LUA` in mod.rs for KEYS, ARGV and replies.
local off, epoch_key, rebuild_key, stats_key, flushes_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local epoch = redis.call('GET', epoch_key)
if not epoch then
  return redis.error_reply('LOST the view state is gone from redis (no epoch)')
end
if epoch ~= ARGV[1] then
  return redis.error_reply('FENCED the view was rebuilt: epoch ' .. epoch .. ', expected ' .. ARGV[1])
end
local np = tonumber(ARGV[3])
local i = 4
for _ = 1, np do
  local cur = redis.call('HGET', off, ARGV[i])
  if (cur or '') ~= ARGV[i + 1] then
    return redis.error_reply('FENCED partition ' .. ARGV[i] .. ' holds ' .. tostring(cur) .. ', expected ' .. ARGV[i + 1])
  end
  i = i + 3
end
local ops = i
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'F' then
    local cur = tonumber(redis.call('HGET', ARGV[i + 1], ARGV[i + 2]) or '0')
    local x = tonumber(ARGV[i + 3])
    local r = (cur or 0 / 0) + (x or 0 / 0)
    if r ~= r or r == math.huge or r == -math.huge then
      return redis.error_reply('REFUSED ' .. ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. ' would not stay a finite number')
    end
    i = i + 4
  elseif op == 'I' or op == 'm' or op == 'M' then
    i = i + 4
  elseif op == 'S' or op == 'X' then
    i = i + 3
  elseif op == 'A' then
    i = i + 3 + tonumber(ARGV[i + 2])
  elseif op == 'D' then
    i = i + 2
  else
    return redis.error_reply('REFUSED bad op ' .. tostring(op))
  end
end
i = ops
while i <= n do
  local op = ARGV[i]
  if op == 'I' then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'F' then
    redis.call('HINCRBYFLOAT', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'm' or op == 'M' then
    local cur = redis.call('HGET', ARGV[i + 1], ARGV[i + 2])
    local x = tonumber(ARGV[i + 3])
    if not cur or (op == 'm' and x < tonumber(cur)) or (op == 'M' and x > tonumber(cur)) then
      redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'S' then
    redis.call('SADD', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 'A' then
    local cnt = tonumber(ARGV[i + 2])
    redis.call('SADD', ARGV[i + 1], unpack(ARGV, i + 3, i + 2 + cnt)); i = i + 3 + cnt
  elseif op == 'D' then
    redis.call('DEL', ARGV[i + 1]); i = i + 2
  else
    redis.call('PEXPIREAT', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  end
end
i = 4
for _ = 1, np do
  redis.call('HSET', off, ARGV[i], ARGV[i + 2])
  i = i + 3
end
redis.call('INCR', flushes_key)
if redis.call('EXISTS', rebuild_key) == 1 then
  local r = redis.call('HGETALL', rebuild_key)
  local done = true
  for j = 1, #r, 2 do
    if string.sub(r[j], 1, 2) == 't:' then
      local cur = redis.call('HGET', off, string.sub(r[j], 3))
      local at = cur and tonumber(string.match(cur, '^(-?%d+):'))
      if not at or at < tonumber(r[j + 1]) then
        done = false
        break
      end
    end
  end
  if done then
    redis.call('DEL', rebuild_key)
    redis.call('HSET', stats_key, 'last_rebuild_done_ms', ARGV[2])
    redis.call('HINCRBY', stats_key, 'rebuilds', 1)
  end
end
return 'OK'
