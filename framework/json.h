#pragma once
// Quoting of strings for the JSON (and TOML basic-string) text that routemoe writes by hand:
// metrics, meta.json, `--json` outputs, the resolved config.

#include <string>
#include <string_view>

namespace routemoe {

// `s` as a double-quoted string with ", \ and control characters escaped (\n, \t, \r, \uXXXX).
// The same text is a valid TOML basic string.
std::string json_quote(std::string_view s);

}  // namespace routemoe
