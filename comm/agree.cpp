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

// Every rank's outcome of a step: kind (-1: succeeded) and message, in rank order.
struct Outcomes {
  std::vector<std::pair<int, std::string>> ranks;
  bool any_failed = false;
};

Outcomes gather_outcomes(Communicator& c, const std::exception_ptr& error) {
  Outcomes out;
  std::int32_t failed = error ? 1 : 0;
  c.all_reduce(&failed, 1, DataType::I32, ReduceOp::Max);
  if (failed == 0) return out;
  out.any_failed = true;
  const auto [kind, message] = describe(error);
  std::vector<char> mine(kMessageBytes + 8, '\0');
  const std::int32_t k = kind;
  std::memcpy(mine.data(), &k, sizeof k);
  std::memcpy(mine.data() + 8, message.data(), std::min(message.size(), kMessageBytes - 1));
  std::vector<char> all(mine.size() * static_cast<std::size_t>(c.size()));
  c.all_gather(mine.data(), all.data(), static_cast<std::int64_t>(mine.size()), DataType::U8);
  for (int r = 0; r < c.size(); ++r) {
    const char* rec = all.data() + static_cast<std::size_t>(r) * mine.size();
    std::int32_t rk = -1;
    std::memcpy(&rk, rec, sizeof rk);
    std::string msg(rec + 8, strnlen(rec + 8, kMessageBytes));
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    out.ranks.emplace_back(rk, std::move(msg));
  }
  return out;
}

std::exception_ptr run_captured(const std::function<void()>& step) {
  try {
    step();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

}  // namespace

void run_agreed(Communicator& c, const std::string& what, const std::function<void()>& step) {
  const Outcomes o = gather_outcomes(c, run_captured(step));
  if (!o.any_failed) return;
  // Somebody failed: everyone learns who and why, then everyone throws the same error.
  std::string detail;
  int first_kind = -1;
  for (std::size_t r = 0; r < o.ranks.size(); ++r) {
    const auto& [rk, msg] = o.ranks[r];
    if (rk < 0) continue;
    if (first_kind < 0) first_kind = rk;
    detail += detail.empty() ? fmt::format("{}: failed on rank {}: ", what, r)
                             : fmt::format("; rank {}: ", r);
    detail += msg;
  }
  raise_error(static_cast<ErrorKind>(first_kind), "", detail, __FILE__, __LINE__);
}

void agree_on_input(Communicator& c, const std::function<void()>& step) {
  if (c.size() == 1) {  // nobody to agree with: the error as raised (with its location)
    step();
    return;
  }
  const Outcomes o = gather_outcomes(c, run_captured(step));
  if (!o.any_failed) return;
  bool same = true;
  int first_kind = -1;
  int failed_ranks = 0;
  std::string detail;
  for (std::size_t r = 0; r < o.ranks.size(); ++r) {
    const auto& [rk, msg] = o.ranks[r];
    same = same && rk >= 0 && msg == o.ranks[0].second;
    if (rk < 0) continue;
    ++failed_ranks;
    if (first_kind < 0) first_kind = rk;
    detail += fmt::format("{}rank {}: {}", detail.empty() ? "" : "; ", r, msg);
  }
  if (same) detail = o.ranks[0].second;
  if (!same && failed_ranks == 1 && o.ranks[0].first >= 0) detail = o.ranks[0].second;
  throw AgreedError(static_cast<ErrorKind>(first_kind), "", detail, __FILE__, __LINE__);
}

}  // namespace routemoe::comm
