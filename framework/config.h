#pragma once
// The run configuration: TOML 1.0 file (read with toml++) with the sections [model], [optim],
// [train], [data], [parallel], [checkpoint]; each key also settable as --section.key=value.
// Precedence: command line > file > defaults. Every key is documented in
// docs/configuration.md; unknown keys, wrong types and out-of-range values are errors
// (Error(Config), one line naming the file, the line and the key), never ignored.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "framework/model_config.h"
#include "framework/optim.h"

namespace routemoe {

struct TrainConfig {
  std::int64_t steps = 1000;             // optimiser steps
  std::int64_t batch_size = 8;           // global sequences per step (all ranks, all micro-batches)
  std::int64_t grad_accum = 1;           // micro-batches per step on each rank
  std::int64_t eval_every = 100;         // steps between validation passes (0: only at the end)
  std::int64_t eval_batches = 8;         // validation batches per pass (0: the whole split)
  std::int64_t log_every = 10;           // steps between console lines
  std::uint64_t seed = 1;                // data order
  int threads = 0;                       // CPU threads per rank (0: all cores / ranks on the node)
  std::string out_dir = "runs/default";  // run directory (must not hold an earlier run)
  bool progress = true;                  // progress bar when stdout is a terminal
  std::string resume;  // "": fresh run; "auto": newest checkpoint of the run; or a path
  std::vector<std::string> stop_signals = {"SIGTERM", "SIGUSR1"};  // checkpoint, then exit 75
  std::string nonfinite = "skip";    // a non-finite loss or gradient norm: skip the step | stop
  std::int64_t nonfinite_limit = 5;  // consecutive skipped steps that stop the run
  bool operator==(const TrainConfig&) const = default;
};

struct CheckpointConfig {
  std::int64_t every = 0;      // steps between checkpoints (0: none; a final one is not implied)
  std::int64_t keep_last = 3;  // checkpoints kept in dir (older ones are deleted)
  std::string dir;             // "": <train.out_dir>/checkpoints
  std::int64_t probe_tokens = 2048;  // held-out validation tokens routed for every record
  std::int64_t record_every =
      0;              // extra routing records every N steps (0: epoch ends and checkpoints only)
  bool trace = true;  // keep <train.out_dir>/trace.h5
  bool operator==(const CheckpointConfig&) const = default;
};

struct DataConfig {
  std::string path = "data/opticks";  // directory of <split>_*.bin shards, or a {split} pattern
  bool headerless = false;            // also accept headerless nanoGPT .bin files
  std::string train_split = "train";
  std::string val_split = "val";
  bool operator==(const DataConfig&) const = default;
};

struct ParallelConfig {
  std::int64_t ep_size = 1;   // expert-parallel group size; divides the world size and n_experts
  double timeout_s = 300.0;   // a collective or file write waiting longer ends the job (0: off)
  bool shared_memory = true;  // ep ranks on one node exchange through a shared-memory window
  bool operator==(const ParallelConfig&) const = default;
};

struct RunConfig {
  ModelConfig model;
  OptimConfig optim;
  TrainConfig train;
  DataConfig data;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;

  bool operator==(const RunConfig&) const = default;

  // Checks every key against its type's rules and range, then every section (Error(Config)
  // naming the key).
  void validate() const;
  // The resolved configuration as TOML (saved in the run directory and in checkpoints). Exact:
  // reading it back (read_config_toml) gives a configuration equal to this one, for every
  // configuration that passes validate().
  std::string to_toml() const;
};

// Reads the TOML 1.0 text `text` onto `cfg`: keys the text sets replace those of `cfg`, the
// others are kept. `source` names the text in errors (the file path). Malformed TOML, unknown
// sections and keys (with a did-you-mean suggestion), wrong value types, out-of-range integers
// and non-finite floats throw Error(Config), one line naming source, line and key.
void read_config_toml(std::string_view text, const std::string& source, RunConfig& cfg);
// read_config_toml on the contents of the file `path` (Error(Config) when it cannot be read).
void read_config_file(const std::string& path, RunConfig& cfg);

// Adds --config FILE and a --section.key option for every configuration key to `cmd` (with the
// key's aliases, e.g. --resume for train.resume, as further names of the same option). The
// options only record what was given; resolve_run_config turns them into a configuration.
void register_run_options(CLI::App& cmd, std::string& config_path);
// After `cmd` was parsed: the defaults, then the file `config_path` (if non-empty), then every
// key given on the command line, under any of its names. So the command line always wins over
// the file. Bad command-line values throw Error(Config) naming the option.
RunConfig resolve_run_config(const CLI::App& cmd, const std::string& config_path);
// The candidate closest to `name` within edit distance 2 ("" when none is that close): the
// did-you-mean of unknown keys, options and subcommands.
std::string closest_name(std::string_view name, const std::vector<std::string>& candidates);
// Every configuration key as "section.key" (for the documentation test).
std::vector<std::string> config_keys();

}  // namespace routemoe
