"""The two Redis scripts of :mod:`pipeline.worker.batch.claiming`, on arq's own key layout.

Each runs atomically in Redis, so a batch worker and stock arq workers can share a queue: a job
is claimed by whoever sets its in-progress key first (arq does the same under WATCH/MULTI).
"""

from __future__ import annotations

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

# KEYS: queue, its pause key (present: claim nothing). ARGV: now (ms), how many to claim, how many
# queued ids to look at at most (arq's queue_read_limit), in-progress timeout (ms), '1' if aborts
# are allowed. Due ids are read a chunk at a time, so a poll that finds what it wants early (the
# usual case: the jobs in progress sit at the front of the queue) reads little. Returns id, score,
# job bytes (or false when the job expired), try, 1 if an abort was asked for before it started:
# five values a job.
CLAIM = f"""
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {{}}
end
local want = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local aborts = ARGV[5] == '1'
local out = {{}}
local offset = 0
while #out < want * 5 and offset < limit do
  local chunk = math.min(math.max(want * 2, 100), limit - offset)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
                         'LIMIT', offset, chunk)
  for i = 1, #ids, 2 do
    if #out >= want * 5 then break end
    local id = ids[i]
    if redis.call('SET', '{in_progress_key_prefix}' .. id, '1', 'NX', 'PX', ARGV[4]) then
      local retry = '{retry_key_prefix}' .. id
      out[#out + 1] = id
      out[#out + 1] = ids[i + 1]
      out[#out + 1] = redis.call('GET', '{job_key_prefix}' .. id)
      out[#out + 1] = redis.call('INCR', retry)
      redis.call('EXPIRE', retry, 88400)
      out[#out + 1] = aborts and redis.call('ZREM', '{abort_jobs_ss}', id) or 0
    end
  end
  if #ids < chunk * 2 then break end
  offset = offset + chunk
end
return out
"""

# KEYS: queue. ARGV: per job six values: id, 'f' (finished) or 'r' (run again), score increment
# (ms, 'r' only), result expiry (ms, 0 = forever), result bytes ('' = none), how long the
# in-progress key is kept (ms; 0 = deleted; arq keeps a cron job's, so it runs once a window).
FINISH = f"""
for i = 1, #ARGV, 6 do
  local id = ARGV[i]
  local in_progress = '{in_progress_key_prefix}' .. id
  local keep = tonumber(ARGV[i + 5])
  if keep > 0 then
    redis.call('PEXPIRE', in_progress, keep)
  else
    redis.call('DEL', in_progress)
  end
  if ARGV[i + 1] == 'f' then
    redis.call('DEL', '{retry_key_prefix}' .. id, '{job_key_prefix}' .. id)
    redis.call('ZREM', '{abort_jobs_ss}', id)
    redis.call('ZREM', KEYS[1], id)
    if ARGV[i + 4] ~= '' then
      local px = tonumber(ARGV[i + 3])
      if px > 0 then
        redis.call('SET', '{result_key_prefix}' .. id, ARGV[i + 4], 'PX', px)
      else
        redis.call('SET', '{result_key_prefix}' .. id, ARGV[i + 4])
      end
    end
  else
    local incr = tonumber(ARGV[i + 2])
    if incr > 0 then
      redis.call('ZINCRBY', KEYS[1], incr, id)
    end
  end
end
return #ARGV / 6
"""
