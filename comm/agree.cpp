// Agreement on failures across ranks (comm/agree.h).

#include "comm/agree.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <system_error>
#include <vector>

#include "framework/error.h"

namespace routemoe::comm {

namespace {

constexpr std::size_t kMessageBytes = 400;

// What `error` says and its kind (-1: nothing failed).
std::pair<int, std::string> describe(const std::exception_ptr& error) {
  if (!error) return {-1, {}};
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return {static_cast<int>(e.kind()), e.detail().empty() ? e.what() : e.detail()};
  } catch (const std::system_error& e) {
    return {static_cast<int>(ErrorKind::Io), e.what()};
  } catch (const std::exception& e) {
    return {static_cast<int>(ErrorKind::Check), e.what()};
  } catch (...) {
    return {static_cast<int>(ErrorKind::Check), "unknown exception"};
  }
}

}  // namespace

void run_agreed(Communicator& c, const std::string& what, const std::function<void()>& step) {
  std::exception_ptr error;
  try {
    step();
  } catch (...) {
    error = std::current_exception();
  }
  std::int32_t failed = error ? 1 : 0;
  c.all_reduce(&failed, 1, DataType::I32, ReduceOp::Max);
  if (failed == 0) return;
  // Somebody failed: everyone learns who and why, then everyone throws the same error.
  const auto [kind, message] = describe(error);
  std::vector<char> mine(kMessageBytes + 8, '\0');
  const std::int32_t k = kind;
  std::memcpy(mine.data(), &k, sizeof k);
  std::memcpy(mine.data() + 8, message.data(), std::min(message.size(), kMessageBytes - 1));
  std::vector<char> all(mine.size() * static_cast<std::size_t>(c.size()));
  c.all_gather(mine.data(), all.data(), static_cast<std::int64_t>(mine.size()), DataType::U8);
  std::string detail;
  int first_kind = -1;
  for (int r = 0; r < c.size(); ++r) {
    const char* rec = all.data() + static_cast<std::size_t>(r) * mine.size();
    std::int32_t rk = -1;
    std::memcpy(&rk, rec, sizeof rk);
    if (rk < 0) continue;
    if (first_kind < 0) first_kind = rk;
    detail += detail.empty() ? fmt::format("{}: failed on rank {}: ", what, r)
                             : fmt::format("; rank {}: ", r);
    detail += std::string(rec + 8, strnlen(rec + 8, kMessageBytes));
  }
  std::replace(detail.begin(), detail.end(), '\n', ' ');
  raise_error(static_cast<ErrorKind>(first_kind), "", detail, __FILE__, __LINE__);
}

}  // namespace routemoe::comm
