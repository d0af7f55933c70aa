-- luacheck for the Lua scripts Redis runs (scripts/luacheck checks each as it is loaded: with
-- producers/contract/lua/prelude.lua and the libraries it uses in front).
std = "lua51"
read_globals = {
  "KEYS", "ARGV", "cjson", "cmsgpack",
  redis = {fields = {"call", "pcall", "error_reply", "status_reply", "log", "sha1hex", "setresp",
                     "LOG_DEBUG", "LOG_VERBOSE", "LOG_NOTICE", "LOG_WARNING"}},
}
max_line_length = 120
-- The prelude's `iq` table comes before every script; a script that uses none of it is fine.
ignore = {"241/iq"}
