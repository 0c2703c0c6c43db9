// The watchdog of parallel.timeout_s (comm/watchdog.h), in one process: a wait longer than the
// timeout ends the process with kExitTimeout and one line naming the operation and its file;
// progress inside a long outer operation keeps it quiet; the heartbeat file exists while it runs
// and is removed when it stops. (Stopped ranks of a real job: tests/e2e/failures.sh stop_rank_*.)

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "comm/watchdog.h"

namespace routemoe::comm {
namespace {

namespace fs = std::filesystem;

TEST(WatchdogDeathTest, AWaitLongerThanTheTimeoutEndsTheProcessNamingIt) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const WatchdogGuard guard(WatchdogOptions{0.3, "", 0, 1});
        const WatchedOp write("metrics write", "/x/metrics.jsonl");
        std::this_thread::sleep_for(std::chrono::seconds(60));  // a write that never completes
      },
      testing::ExitedWithCode(kExitTimeout),
      "routemoe: timeout error on rank 0 .*: no progress for [0-9.]+ s in metrics write "
      "/x/metrics.jsonl .*parallel.timeout_s = 0.3.*aborting the job");
}

TEST(Watchdog, ProgressInsideALongOperationKeepsItQuiet) {
  // 3 s inside one outer operation, 1.5 s timeout: every inner operation that completes is
  // progress, so nothing fires (a false alarm would end this test process with status 3).
  const WatchdogGuard guard(WatchdogOptions{1.5, "", 0, 1});
  const WatchedOp outer("checkpoint write", "/x/ckpt.h5");
  for (int i = 0; i < 60; ++i) {
    const WatchedOp inner("all_reduce");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(watchdog_running());
}

TEST(Watchdog, HeartbeatFileWhileRunningRemovedAfter) {
  const fs::path dir = fs::temp_directory_path() / ("routemoe_hb_" + std::to_string(::getpid()));
  const fs::path beat = dir / "rank_3";
  {
    const WatchdogGuard guard(WatchdogOptions{60, dir.string(), 3, 4});
    ASSERT_TRUE(fs::exists(beat));
    std::ifstream in(beat);
    std::string line;
    std::getline(in, line);
    EXPECT_EQ(line.rfind("pid=" + std::to_string(::getpid()) + " host=", 0), 0u) << line;
    EXPECT_NE(line.find(" op=- "), std::string::npos) << line;
  }
  EXPECT_FALSE(watchdog_running());
  EXPECT_FALSE(fs::exists(beat));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace routemoe::comm
