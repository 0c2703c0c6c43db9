#include "framework/train/run_dir.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "framework/error.h"
#include "framework/train/checkpoint.h"

namespace routemoe {

namespace fs = std::filesystem;

RunPaths run_paths(const RunConfig& cfg) {
  const fs::path out(cfg.train.out_dir);
  RunPaths p;
  p.out_dir = cfg.train.out_dir;
  p.checkpoints = cfg.checkpoint.dir.empty() ? (out / "checkpoints").string() : cfg.checkpoint.dir;
  p.config = (out / "config.toml").string();
  p.metrics = (out / "metrics.jsonl").string();
  p.trace = (out / "trace.h5").string();
  return p;
}

void prepare_run_dir(const RunConfig& cfg, const RunPaths& paths, comm::Communicator& world) {
  if (world.rank() == 0) {
    RM_CHECK_KIND(
        Config, !cfg.train.resume.empty() || !fs::exists(paths.metrics),
        fmt::format("train.out_dir {} already holds a run (metrics.jsonl); choose another "
                    "directory or resume it with --resume auto",
                    paths.out_dir));
    fs::create_directories(paths.out_dir);
    std::ofstream f(paths.config);
    f << cfg.to_toml();
    RM_CHECK_KIND(Io, f.good(), fmt::format("cannot write {}", paths.config));
  }
  world.barrier();
}

ResumePoint resume_run(const RunConfig& cfg, const RunPaths& paths, Model& model, AdamW& opt,
                       comm::Communicator& world) {
  const TrainConfig& tc = cfg.train;
  if (tc.resume.empty()) return {};
  ResumePoint point{tc.resume, 0};
  if (point.checkpoint == "auto") {
    const std::vector<std::string> found = list_checkpoints(paths.checkpoints);
    RM_CHECK_KIND(Config, !found.empty(),
                  fmt::format("--resume auto: no checkpoint in {}", paths.checkpoints));
    point.checkpoint = found.back();
  }
  const CheckpointState st = load_checkpoint(point.checkpoint, model, opt);
  RM_CHECK_KIND(Config, st.data_seed == tc.seed,
                fmt::format("{} was trained with train.seed {}, this run has {}: the data order "
                            "would change",
                            point.checkpoint, st.data_seed, tc.seed));
  RM_CHECK_KIND(Config, st.step < tc.steps,
                fmt::format("{} is at step {}; train.steps is {}: nothing left to train",
                            point.checkpoint, st.step, tc.steps));
  point.step = st.step;
  // What the interrupted run logged after its checkpoint is redone now: drop it.
  if (world.rank() == 0) truncate_run_after(paths.metrics, paths.trace, st.step);
  return point;
}

}  // namespace routemoe
