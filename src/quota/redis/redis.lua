-- feishu-gateway: the shared quota of one (app, route) or (app, tenant,
-- route) key, decided in ONE atomic step inside Redis (src/quota/redis.rs
-- loads it and calls it by EVALSHA).
--
-- The algorithm is the local engine's (src/quota/plan.rs): one GCRA with
-- emission interval t and burst b, tau = (b - 1) * t. Per key one number,
-- the theoretical arrival time `tat`: a request at `now` is admitted iff
-- now >= tat - tau, and an admission sets tat = max(tat, now) + t.
--
-- Time is the Redis server's own (TIME, microseconds since the Unix epoch):
-- no decision depends on the replicas' clocks agreeing.
--
-- KEYS[1]  the key's tat (absent: fresh)
-- KEYS[2]  when the key's upstream pause ends (absent: none)
--          (both in one hash slot: the caller wraps the key name in {...})
-- ARGV[1]  the operation; its arguments follow (integers, microseconds):
--
--   take t tau max_wait [floor]
--                       -> {1, wait, remaining}  admitted; go after `wait`:
--                                                0 = now, > 0 = a slot is
--                                                reserved that far ahead
--                                                (wait mode, wait <= max_wait)
--                          {0, wait, 0}          over the limit: the next
--                                                slot is `wait` away; nothing
--                                                is stored
--                          {2, left, 0}          paused `left` more; nothing
--                                                is stored
--   peek t tau [floor]  -> like take with max_wait 0, but never stores;
--                          {1, 0, n}: n could be admitted now
--                          (take and peek count the key's tat as at least
--                          `floor`: the drain of a key the fleet's heal did
--                          not reach, e.g. a store app tenant's; absent or 0:
--                          none)
--   pause duration      -> {left}: the pause ends `left` from now (extends,
--                          never shortens, a running pause)
--   give t              -> {tat - now}: gives one admission back: tat = tat - t
--                          (absent, or at or before now: the key is fresh)
--   drain t slots at    -> {wait}: tat = max(tat, max(at, now) + slots * t),
--                          so nothing is admitted before
--                          max(at, now) + (slots - b + 1) * t
--   heal grace          -> {at, at - now}: KEYS[1] is the fleet's heal key;
--                          the heal time in progress, or now + grace
--
-- Every key expires when it stops mattering: a tat once it has passed (an
-- absent tat is the same state), a pause when it ends. Redis memory stays
-- bounded by the keys in use (configured, or tenants held by the
-- replicas), and idle keys take none.

-- Redis < 5 refuses writes after TIME unless effects are replicated (the
-- default since 5; 7 keeps the call as a no-op).
if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local op = ARGV[1]

-- Integers are exact in Lua's doubles up to 2^53 us (the year 2255); '%.0f'
-- writes them without an exponent.
local function store(key, value)
  local ttl_ms = math.floor((value - now) / 1000) + 1
  redis.call('SET', key, string.format('%.0f', value), 'PX', string.format('%.0f', ttl_ms))
end

local function get(key)
  return tonumber(redis.call('GET', key) or 0) or 0
end

if op == 'take' or op == 'peek' then
  local t = tonumber(ARGV[2])
  local tau = tonumber(ARGV[3])
  local floor = ARGV[4]
  if op == 'take' then
    floor = ARGV[5]
  end
  floor = tonumber(floor or 0) or 0
  local paused = get(KEYS[2])
  if paused > now then
    return {2, paused - now, 0}
  end
  local tat = get(KEYS[1])
  if tat < floor then
    tat = floor
  end
  if tat < now then
    tat = now
  end
  local wait = tat - tau - now
  if wait < 0 then
    wait = 0
  end
  if op == 'peek' then
    if wait > 0 then
      return {0, wait, 0}
    end
    return {1, 0, math.floor((now + tau - tat) / t) + 1}
  end
  if wait > tonumber(ARGV[4]) then
    return {0, wait, 0}
  end
  tat = tat + t
  store(KEYS[1], tat)
  local remaining = 0
  if wait == 0 then
    remaining = math.max(0, math.floor((now + tau - tat) / t) + 1)
  end
  return {1, wait, remaining}
end

if op == 'pause' then
  local ends = now + tonumber(ARGV[2])
  local current = get(KEYS[2])
  if current < ends then
    store(KEYS[2], ends)
  else
    ends = current
  end
  return {ends - now}
end

if op == 'give' then
  local tat = get(KEYS[1]) - tonumber(ARGV[2])
  if tat > now then
    store(KEYS[1], tat)
    return {tat - now}
  end
  redis.call('DEL', KEYS[1])
  return {0}
end

if op == 'drain' then
  local t = tonumber(ARGV[2])
  local slots = tonumber(ARGV[3])
  local at = tonumber(ARGV[4])
  if at < now then
    at = now
  end
  local target = at + slots * t
  local tat = get(KEYS[1])
  if tat < target then
    store(KEYS[1], target)
    tat = target
  end
  return {tat - now}
end

if op == 'heal' then
  local at = get(KEYS[1])
  if at <= now then
    at = now + tonumber(ARGV[2])
    store(KEYS[1], at)
  end
  return {at, at - now}
end

return redis.error_reply('feishu-gateway quota script: unknown operation ' .. tostring(op))
