#include "framework/train/run_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "framework/error.h"
#include "framework/h5.h"
#include "framework/runfile.h"
#include "framework/train/checkpoint.h"

namespace routemoe {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kRunIdLength = 32;

std::string host_name() {
  std::array<char, 256> host{};
  if (gethostname(host.data(), host.size() - 1) != 0) return "?";
  return host.data();
}

// The first line of `path`, "" when unreadable.
std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// Writes `text` to `path` through a temporary file and a rename (never half a file).
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << text;
    f.close();
    RM_CHECK_KIND(Io, !f.fail(), fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
}

// Rank 0's part of open_run_dir: returns the run id ("" when new: the caller makes one).
std::string open_on_lead(const RunConfig& cfg, const RunPaths& paths, RunDir& run) {
  std::error_code ec;
  fs::create_directories(paths.out_dir, ec);
  RM_CHECK_KIND(Io, !ec,
                fmt::format("cannot create train.out_dir {}: {}", paths.out_dir, ec.message()));
  run.lock = RunLock(paths.lock);
  RM_CHECK_KIND(Config, !cfg.train.resume.empty() || !fs::exists(paths.metrics),
                fmt::format("train.out_dir {} already holds a run (metrics.jsonl); choose another "
                            "directory or resume it with --resume auto",
                            paths.out_dir));
  if (!fs::exists(paths.run_id)) return "";
  const std::string id = first_line(paths.run_id);
  RM_CHECK_KIND(
      Data,
      id.size() == kRunIdLength && id.find_first_not_of("0123456789abcdef") == std::string::npos,
      fmt::format("{}: not a run id ('{}'; expected {} hex digits)", paths.run_id, id,
                  kRunIdLength));
  return id;
}

// The checkpoint that train.resume names, on rank 0 (checked against the run's identity).
std::string choose_checkpoint(const RunConfig& cfg, const RunPaths& paths, const RunDir& run) {
  if (cfg.train.resume != "auto") {
    const std::string& path = cfg.train.resume;
    std::string owner;
    if (fs::is_regular_file(path)) {
      owner = runfile::reading(path, [&] {
        const h5::File f = h5::File::open_read(path);
        runfile::check_header(f, path, {runfile::Kind::Checkpoint});
        return runfile::read_run_id(f);
      });
    }
    RM_CHECK_KIND(Config, run.new_id || owner.empty() || owner == run.run_id,
                  fmt::format("{} belongs to run {}, but train.out_dir {} is run {}; to branch "
                              "from it, resume into a new train.out_dir",
                              path, owner, paths.out_dir, run.run_id));
    return path;
  }
  const RunCheckpoints found = list_run_checkpoints(paths.checkpoints, run.run_id);
  if (found.own.empty()) {
    std::string others;
    for (std::size_t i = 0; i < found.foreign.size() && i < 5; ++i) {
      others += (i ? ", " : "") + found.foreign[i];
    }
    if (found.foreign.size() > 5) others += fmt::format(" and {} more", found.foreign.size() - 5);
    RM_FAIL(Config, fmt::format("--resume auto: no checkpoint in {} of run {}{}", paths.checkpoints,
                                run.run_id,
                                others.empty() ? std::string()
                                               : fmt::format(" (ignored: {}; resume one of "
                                                             "them by path if it is this run's)",
                                                             others)));
  }
  return found.own.back();
}

// Sends rank 0's string to every rank.
std::string broadcast_string(comm::Communicator& world, std::string s) {
  std::int64_t n = static_cast<std::int64_t>(s.size());
  world.broadcast(&n, 1, comm::DataType::I64, 0);
  s.resize(static_cast<std::size_t>(n));
  world.broadcast(s.data(), n, comm::DataType::U8, 0);
  return s;
}

}  // namespace

RunPaths run_paths(const RunConfig& cfg) {
  const fs::path out(cfg.train.out_dir);
  RunPaths p;
  p.out_dir = cfg.train.out_dir;
  p.checkpoints = cfg.checkpoint.dir.empty() ? (out / "checkpoints").string() : cfg.checkpoint.dir;
  p.config = (out / "config.toml").string();
  p.metrics = (out / "metrics.jsonl").string();
  p.trace = (out / "trace.h5").string();
  p.run_id = (out / "run_id").string();
  p.lock = (out / "run.lock").string();
  p.heartbeat = (out / "heartbeat").string();
  return p;
}

RunLock::RunLock(const std::string& path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  RM_CHECK_KIND(Io, fd_ >= 0, fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    const std::string holder = first_line(path);
    RM_CHECK_KIND(Io, err == EWOULDBLOCK,
                  fmt::format("cannot lock {}: {}", path, std::strerror(err)));
    RM_FAIL(Config, fmt::format("{} is in use by another routemoe job ({}; lock file {}): two "
                                "runs must not share a train.out_dir",
                                fs::path(path).parent_path().string(),
                                holder.empty() ? "holder unknown" : holder, path));
  }
  const std::string me = fmt::format("pid={} host={}\n", ::getpid(), host_name());
  const bool written = ::ftruncate(fd_, 0) == 0 &&
                       ::pwrite(fd_, me.data(), me.size(), 0) == static_cast<ssize_t>(me.size());
  RM_CHECK_KIND(Io, written, fmt::format("cannot write {}: {}", path, std::strerror(errno)));
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

RunLock& RunLock::operator=(RunLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

std::string new_run_id() {
  std::random_device rd;
  std::string id;
  while (id.size() < kRunIdLength) id += fmt::format("{:08x}", rd());
  return id.substr(0, kRunIdLength);
}

RunDir open_run_dir(const RunConfig& cfg, const RunPaths& paths, comm::Communicator& world) {
  RunDir run;
  std::string id;
  if (world.rank() == 0) {
    id = open_on_lead(cfg, paths, run);
    run.new_id = id.empty();
    if (run.new_id) id = new_run_id();
  }
  run.run_id = broadcast_string(world, id);
  return run;
}

ResumePoint resume_run(const RunConfig& cfg, const RunPaths& paths, const RunDir& run,
                       const std::vector<std::int32_t>& probe, Model& model, AdamW& opt,
                       comm::Communicator& world) {
  const TrainConfig& tc = cfg.train;
  ResumePoint point;
  if (!tc.resume.empty()) {
    point.checkpoint =
        broadcast_string(world, world.rank() == 0 ? choose_checkpoint(cfg, paths, run) : "");
    const CheckpointState st = load_checkpoint(point.checkpoint, model, opt);
    RM_CHECK_KIND(Config, st.data_seed == tc.seed,
                  fmt::format("{} was trained with train.seed {}, this run has {}: the data order "
                              "would change",
                              point.checkpoint, st.data_seed, tc.seed));
    RM_CHECK_KIND(Config, st.step < tc.steps,
                  fmt::format("{} is at step {}; train.steps is {}: nothing left to train",
                              point.checkpoint, st.step, tc.steps));
    point.step = st.step;
  }
  if (world.rank() == 0) {
    check_foreign_checkpoints(paths.checkpoints, run.run_id, point.step, tc.steps);
    if (!point.checkpoint.empty() && cfg.checkpoint.trace) {
      check_trace_continues(paths.trace, cfg, probe, run.run_id);
    }
  }
  world.barrier();
  return point;
}

void commit_run_dir(const RunConfig& cfg, const RunPaths& paths, const RunDir& run,
                    const ResumePoint& resumed, comm::Communicator& world) {
  if (world.rank() == 0) {
    if (run.new_id) write_file_atomically(paths.run_id, run.run_id + "\n");
    write_file_atomically(paths.config, cfg.to_toml());
    // What the interrupted run logged after its checkpoint is redone now: drop it.
    if (!resumed.checkpoint.empty()) {
      truncate_run_after(paths.metrics, paths.trace, resumed.step);
    }
  }
  world.barrier();
}

}  // namespace routemoe
