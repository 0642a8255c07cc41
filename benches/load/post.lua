-- wrk script for benches/load.sh.
--
--   wrk ... -s post.lua -- AUTH_FILE [MODE] [STOP_AFTER]
--
-- AUTH_FILE holds one bearer credential per line: gateway client keys when
-- wrk talks to the gateway, tenant tokens when it talks to the fake or nginx,
-- so the fake does the same work behind every target.
--
-- MODE "put" (default): put_top_notice with a realistic body, one request
-- per credential in turn (so 100 keys spread the load over 100 apps), each
-- to its own chat.
-- MODE "mix" (the soak): the same puts, plus delete_top_notice, get chat
-- (a route outside the catalog), puts that may wait for their quota
-- (X-Gateway-Max-Wait), unknown keys (401) and paths outside /open-apis/
-- (404), interleaved.
--
-- STOP_AFTER (optional): each thread stops after that many answers (for a
-- fixed amount of work under a profiler).
--
-- At the end one line is printed, read by load.sh:
--   RESULT requests=N duration_s=S rps=R non2xx=N errors=N p50_us=.. ...

local reqs = {}
local idx = 0
local stop_after = 0
local answered = 0

local BODY = '{"chat_top_notice":[{"action_type":"1",'
    .. '"message_id":"om_dc13264520392913993dd051dba21dcf"}]}'
local DELETE_BODY = '{}'

local function chat(i)
    return string.format("oc_5ad11d72b830411d72b836c2%06d", i)
end

local function headers(auth, with_body, max_wait)
    local h = {
        ["Authorization"] = "Bearer " .. auth,
        ["User-Agent"] = "oapi-sdk-go/v3.4.0",
    }
    if with_body then
        h["Content-Type"] = "application/json; charset=utf-8"
    end
    if max_wait then
        h["X-Gateway-Max-Wait"] = max_wait
    end
    return h
end

local function put(auth, i, max_wait)
    return wrk.format("POST", "/open-apis/im/v1/chats/" .. chat(i)
        .. "/top_notice/put_top_notice", headers(auth, true, max_wait), BODY)
end

local function delete(auth, i)
    return wrk.format("POST", "/open-apis/im/v1/chats/" .. chat(i)
        .. "/top_notice/delete_top_notice", headers(auth, true), DELETE_BODY)
end

local function get_chat(auth, i)
    return wrk.format("GET", "/open-apis/im/v1/chats/" .. chat(i), headers(auth, false), nil)
end

local thread_count = 0
function setup(thread)
    thread:set("thread_id", thread_count)
    thread_count = thread_count + 1
end

function init(args)
    local auths = {}
    for line in io.lines(args[1]) do
        if #line > 0 then
            auths[#auths + 1] = line
        end
    end
    assert(#auths > 0, "no credentials in " .. args[1])
    local mode = args[2] or "put"
    stop_after = tonumber(args[3] or "0") or 0
    for i, auth in ipairs(auths) do
        reqs[#reqs + 1] = put(auth, i)
        if mode == "mix" then
            -- Per 10 apps: 1 delete, 1 get chat; per 20: a put that may wait
            -- 50 ms for its quota (wait mode), a bad key and a 404.
            if i % 10 == 0 then
                reqs[#reqs + 1] = delete(auth, i)
                reqs[#reqs + 1] = get_chat(auth, i)
            end
            if i % 20 == 0 then
                reqs[#reqs + 1] = put(auth, i, "50")
                reqs[#reqs + 1] = put("not-a-gateway-key-" .. i, i)
                reqs[#reqs + 1] = wrk.format("GET", "/no-such-path", headers(auth, false), nil)
            end
        end
    end
    -- Threads start at different places in the rotation.
    idx = ((thread_id or 0) * 37) % #reqs
    if stop_after > 0 then
        -- Defined only when needed: with a response() callback wrk parses
        -- every answer's headers and body.
        response = function()
            answered = answered + 1
            if answered >= stop_after then
                wrk.thread:stop()
            end
        end
    end
end

function request()
    idx = idx % #reqs + 1
    return reqs[idx]
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d duration_s=%.3f rps=%.1f non2xx=%d errors=%d "
            .. "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
        summary.requests, summary.duration / 1e6,
        summary.requests / (summary.duration / 1e6), e.status,
        e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max))
end
