-- wrk script: POST /put_file with a JSON record, a new filepath and sha256 each request.
-- The hash starts with the counter scattered (times an odd constant, modulo 2^32: each
-- counter its own value) and the thread's id: its first digits, which the server indexes
-- records by, differ from record to record and fall anywhere, as real hashes do.
-- The key comes from PP_KEY; the hostname is "bench" (counted afterwards by server_load).
-- PP_RUN names the run, so the paths of runs against one server are all new.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = os.getenv("PP_KEY")

local run = os.getenv("PP_RUN") or "0"
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

local counter = 0
function request()
  counter = counter + 1
  -- exact in a double while counter < 2^21 (a run makes some tens of thousands)
  local scattered = (counter * 2654435761) % 4294967296
  local body = string.format(
    '{"filepath":"/wrk/%s/%d/%d","hostname":"bench","ip_address":"127.0.0.1",' ..
    '"sha256":"%04x%04x%04x%04x%048x","file_size":1,"file_mode":33188,"file_uid":0,' ..
    '"file_gid":0,' ..
    '"file_mtime":1.5,"file_atime":1.5,"file_ctime":1.5}',
    run, id, counter, math.floor(scattered / 65536), scattered % 65536, id % 65536,
    math.floor(counter / 65536) % 65536, counter % 65536)
  return wrk.format(nil, "/put_file", nil, body)
end
