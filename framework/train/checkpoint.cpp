#include "framework/train/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <mpi.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <regex>

#include "comm/agree.h"
#include "comm/mpi_runtime.h"
#include "comm/watchdog.h"
#include "framework/error.h"
#include "framework/h5.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/runfile.h"
#include "layers/model.h"

namespace routemoe {

namespace fs = std::filesystem;

namespace {

// The step of a checkpoint file name ckpt_<step>.h5 (-1 for another name).
std::int64_t step_of(const std::string& path) {
  std::smatch m;
  const std::string name = fs::path(path).filename().string();
  static const std::regex pattern("ckpt_([0-9]{1,18})\\.h5");
  return std::regex_match(name, m, pattern) ? std::stoll(m[1].str()) : -1;
}

// Why the checkpoint file `path` is not run `run_id`'s ("" when it is).
std::string foreign_reason(const std::string& path, const std::string& run_id) {
  std::string owner;
  try {
    const h5::File f = h5::File::open_read(path);
    runfile::check_header(f, path, {runfile::Kind::Checkpoint});
    owner = runfile::read_run_id(f);
  } catch (const Error&) {
    return "not a readable routemoe checkpoint";
  }
  if (!run_id.empty() && owner == run_id) return "";
  return owner.empty() ? "no run id: written before run ids" : fmt::format("run {}", owner);
}

// A layer's graph diagnostics over the probe tokens of every rank (runfile::kGraphStatNames
// order): each named sum and count added over the ranks, then divided. Empty without any.
std::vector<float> graph_stats(const std::vector<layers::RouterDiagnostic>& diag,
                               comm::Communicator& world) {
  if (diag.empty()) return {};
  std::vector<double> sums(2 * runfile::kGraphStats, 0.0);
  for (std::size_t i = 0; i < runfile::kGraphStats; ++i) {
    const auto it = std::find_if(diag.begin(), diag.end(), [&](const auto& x) {
      return x.name == runfile::kGraphStatNames[i];
    });
    RM_CHECK(it != diag.end(),
             fmt::format("router diagnostic '{}' missing", runfile::kGraphStatNames[i]));
    sums[2 * i] = it->sum;
    sums[2 * i + 1] = it->count;
  }
  world.all_reduce(sums.data(), static_cast<std::int64_t>(sums.size()), comm::DataType::F64,
                   comm::ReduceOp::Sum);
  std::vector<float> out(runfile::kGraphStats);
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = sums[2 * i + 1] > 0 ? static_cast<float>(sums[2 * i] / sums[2 * i + 1])
                                 : std::numeric_limits<float>::quiet_NaN();
  }
  return out;
}

}  // namespace

RoutingRecord route_probe(Model& model, const std::vector<std::int32_t>& probe,
                          std::int64_t seq_len, comm::Communicator& world) {
  const ModelConfig& mc = model.config();
  const std::int64_t sequences = static_cast<std::int64_t>(probe.size()) / seq_len;
  const int W = world.size();
  RM_CHECK_KIND(Config, sequences > 0 && sequences % W == 0,
                fmt::format("the probe set has {} sequences of {} tokens; it must be a positive "
                            "multiple of the {} ranks (checkpoint.probe_tokens)",
                            sequences, seq_len, W));
  const std::int64_t rows = sequences / W;
  const std::int64_t n_local = rows * seq_len;
  const std::int32_t* in = probe.data() + world.rank() * n_local;
  std::vector<std::int32_t> targets(static_cast<std::size_t>(n_local), -1);
  // Router statistics (AC weights) over the whole probe set, not this rank's slice, and GEMMs
  // whose bits do not depend on how many rows a rank holds: the record is the same, bit for
  // bit, on any rank count and ep_size.
  const ops::RowStableGemm stable;
  model.forward(in, targets.data(), rows, seq_len, nullptr, /*dropless=*/true, &world);
  const std::vector<RoutingView> views = model.last_routing();
  const std::vector<std::vector<layers::RouterDiagnostic>> diag = model.routing_diagnostics();
  RoutingRecord rec;
  rec.tokens = sequences * seq_len;
  rec.top_k = mc.top_k;
  rec.d_model = mc.d_model;
  rec.groups = 1;  // AC statistics over the whole probe set, whatever the rank count
  const std::int64_t K = mc.top_k, E = mc.n_experts, d = mc.d_model;
  for (std::size_t m = 0; m < views.size(); ++m) {
    const RoutingView& v = views[m];
    LayerRouting L;
    L.router = router_name(mc.effective_router(static_cast<std::int64_t>(m)));
    std::vector<float> probs(static_cast<std::size_t>(n_local * K));
    for (std::int64_t i = 0; i < n_local; ++i) {
      for (std::int64_t j = 0; j < K; ++j)
        probs[static_cast<std::size_t>(i * K + j)] = v.probs[i * E + v.choice[i * K + j]];
    }
    L.experts.resize(static_cast<std::size_t>(rec.tokens * K));
    L.gates.resize(L.experts.size());
    L.probs.resize(L.experts.size());
    world.all_gather(v.choice, L.experts.data(), n_local * K, comm::DataType::I32);
    world.all_gather(v.gates, L.gates.data(), n_local * K, comm::DataType::F32);
    world.all_gather(probs.data(), L.probs.data(), n_local * K, comm::DataType::F32);
    if (v.ac_scale != nullptr) {
      L.ac_scale.resize(static_cast<std::size_t>(rec.tokens * d));
      world.all_gather(v.ac_scale, L.ac_scale.data(), n_local * d, comm::DataType::F32);
    }
    L.graph = graph_stats(diag.at(m), world);
    rec.layers.push_back(std::move(L));
  }
  return rec;
}

namespace {

// The three flat buffers a parameter's rows come from: values, AdamW m, AdamW v.
std::array<const float*, 3> tensor_sources(const Param& p, AdamW& opt) {
  return {p.value.data<float>(), opt.m().data<float>() + p.offset,
          opt.v().data<float>() + p.offset};
}

// Parallel HDF5: dense tensors written by rank 0, each expert slice by the first replica of its
// experts (edp rank 0), one chunk per expert so that every chunk has one writer. Collective; every
// collective HDF5 step is agreed (comm::run_agreed), so a rank whose write fails never leaves the
// others waiting in the next one.
void write_tensors_parallel(h5::File& f, ParamStore& ps, AdamW& opt, comm::ProcessGroups& groups,
                            const std::string& what) {
  const bool lead = groups.world->rank() == 0;
  const bool expert_writer = groups.edp->rank() == 0;
  for (const Param& p : ps.params()) {
    const std::int64_t rows = p.local_shape.empty() ? 1 : p.local_shape[0];
    const std::int64_t begin = p.expert ? p.expert_begin : 0;
    const bool writes = p.expert ? expert_writer : lead;
    const auto src = tensor_sources(p, opt);
    for (int t = 0; t < 3; ++t) {
      const std::string name = fmt::format("{}/{}", runfile::kTensorGroups[t], p.name);
      comm::run_agreed(*groups.world, what,
                       [&] { f.create_f32(name, p.global_shape, p.expert ? 1 : 0); });
      comm::run_agreed(*groups.world, what, [&] {
        f.write_f32_rows(name, begin, writes ? rows : 0, src[static_cast<std::size_t>(t)]);
      });
    }
  }
}

// Without parallel HDF5: every expert tensor is gathered over the ep group and rank 0 (the only
// rank with a file, `f` null elsewhere) writes it. Collective over the world (the gathers over
// the ep group; each write agreed over the world).
void write_tensors_gathered(h5::File* f, ParamStore& ps, AdamW& opt, comm::ProcessGroups& groups,
                            const std::string& what) {
  for (const Param& p : ps.params()) {
    const auto src = tensor_sources(p, opt);
    for (int t = 0; t < 3; ++t) {
      std::vector<float> full;
      const float* data = src[static_cast<std::size_t>(t)];
      if (p.expert && groups.ep->size() > 1) {
        full.resize(static_cast<std::size_t>(p.value.numel() * groups.ep->size()));
        groups.ep->all_gather(data, full.data(), p.value.numel(), comm::DataType::F32);
        data = full.data();
      }
      comm::run_agreed(*groups.world, what, [&] {
        if (f == nullptr) return;
        const std::string name = fmt::format("{}/{}", runfile::kTensorGroups[t], p.name);
        f->create_f32(name, p.global_shape, p.expert ? 1 : 0);
        f->write_f32_rows(name, 0, p.global_shape.empty() ? 1 : p.global_shape[0], data);
      });
    }
  }
}

runfile::CheckpointInfo checkpoint_info(const RunConfig& cfg, const Model& model,
                                        const CheckpointState& state,
                                        const comm::ProcessGroups& groups) {
  runfile::CheckpointInfo info;
  info.step = state.step;
  info.epoch = state.epoch;
  info.data_seed = state.data_seed;
  info.world_size = groups.world->size();
  info.ep_size = groups.ep_size;
  info.routers = model.config().expanded_routers();
  info.config = cfg.to_toml();
  info.run_id = state.run_id;
  return info;
}

// The routing record (identical on all ranks) and the attributes.
void write_meta(h5::File& f, const runfile::CheckpointInfo& info, const RoutingRecord& record,
                const AdamW& opt) {
  runfile::write_routing(f, runfile::kRoutingGroup, record);
  runfile::write_checkpoint_info(f, info);
  f.set_attr("/optim", "steps_taken", opt.steps_taken());
}

// Refuses a state with a non-finite value (a non-finite step never reaches the weights, see
// step.h; this keeps a checkpoint from ever holding one).
void check_finite_state(ParamStore& ps, AdamW& opt) {
  for (const Param& p : ps.params()) {
    const auto src = tensor_sources(p, opt);
    for (int t = 0; t < 3; ++t) {
      const float* x = src[static_cast<std::size_t>(t)];
      const bool finite =
          std::all_of(x, x + p.value.numel(), [](float v) { return std::isfinite(v); });
      RM_CHECK(finite, fmt::format("{}/{} holds a non-finite value; not writing a checkpoint",
                                   runfile::kTensorGroups[t], p.name));
    }
  }
}

// What a checkpoint of this state takes on disk, generously: the tensors, the routing record and
// a margin for HDF5's metadata (object headers, chunk indexes, checksums, the configuration).
std::int64_t checkpoint_bytes(ParamStore& ps, const RoutingRecord& record) {
  std::int64_t bytes = 256 << 10;
  for (const Param& p : ps.params()) bytes += 3 * (4 * shape_numel(p.global_shape) + 2048);
  for (const LayerRouting& L : record.layers) {
    bytes += 4 * static_cast<std::int64_t>(L.experts.size() + L.gates.size() + L.probs.size() +
                                           L.ac_scale.size()) +
             8192;
  }
  return bytes + bytes / 20;
}

// Reserves `bytes` of disk space for the file `tmp` that was just created (space and quota): they
// are allocated beyond its end (fallocate with FALLOC_FL_KEEP_SIZE), so the writes that follow
// land in allocated blocks and cannot run out of space. Space running out in the middle of a
// parallel HDF5 write would strand the ranks in HDF5's own collectives, where no agreement
// reaches; found here, the failure is agreed like any other. Where the file system cannot
// allocate, statvfs checks the free space instead.
void reserve_space(const std::string& tmp, std::int64_t bytes) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CLOEXEC);
  RM_CHECK_KIND(Io, fd >= 0,
                fmt::format("cannot open {}: {} (errno {})", tmp, std::strerror(errno), errno));
  const int rc = ::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, bytes) == 0 ? 0 : errno;
  ::close(fd);
  if (rc == 0) return;
  if (rc == EOPNOTSUPP || rc == ENOSYS || rc == EINVAL) {
    struct statvfs st {};
    const std::string dir = fs::path(tmp).parent_path().string();
    if (::statvfs(dir.empty() ? "." : dir.c_str(), &st) != 0) return;
    const auto avail =
        static_cast<std::int64_t>(st.f_bavail) * static_cast<std::int64_t>(st.f_frsize);
    RM_CHECK_KIND(Io, avail >= bytes,
                  fmt::format("cannot write {}: it needs about {} bytes, {} has {} free", tmp,
                              bytes, dir, avail));
    return;
  }
  RM_FAIL(Io, fmt::format("cannot write {}: reserving {} bytes for it failed: {} (errno {})", tmp,
                          bytes, std::strerror(rc), rc));
}

// Gives back what reserve_space allocated beyond the end of the complete file (a truncation to
// its own size frees the blocks past the end).
void release_reserve(const std::string& tmp) {
  std::error_code ec;
  const auto size = fs::file_size(tmp, ec);
  if (!ec) fs::resize_file(tmp, size, ec);
}

// The file of a checkpoint being written: an open parallel file on every rank, or a serial file
// on rank 0 only. On failure it is abandoned (never closed collectively) and its .tmp removed.
struct PartialFile {
  std::unique_ptr<h5::File> file;
  std::string tmp;
  bool lead = false;

  void discard() noexcept {
    if (file) file->abandon();
    file.reset();
    std::error_code ec;
    if (lead) fs::remove(tmp, ec);
  }
};

void write_parallel(PartialFile& pf, const runfile::CheckpointInfo& info,
                    const RoutingRecord& record, Model& model, AdamW& opt,
                    comm::ProcessGroups& groups, const std::string& what) {
  comm::Communicator& world = *groups.world;
  comm::run_agreed(world, what, [&] {
    MPI_Comm comm = MPI_COMM_WORLD;
    pf.file = std::make_unique<h5::File>(h5::File::create_parallel(pf.tmp, &comm));
  });
  comm::run_agreed(world, what, [&] {
    if (pf.lead) reserve_space(pf.tmp, checkpoint_bytes(model.params(), record));
  });
  write_tensors_parallel(*pf.file, model.params(), opt, groups, what);
  // Collective: every rank writes the same values.
  comm::run_agreed(world, what, [&] { write_meta(*pf.file, info, record, opt); });
  comm::run_agreed(world, what, [&] { pf.file->flush(); });
  comm::run_agreed(world, what, [&] {
    std::unique_ptr<h5::File> f = std::move(pf.file);
    f->close();
  });
}

void write_gathered(PartialFile& pf, const runfile::CheckpointInfo& info,
                    const RoutingRecord& record, Model& model, AdamW& opt,
                    comm::ProcessGroups& groups, const std::string& what) {
  comm::Communicator& world = *groups.world;
  comm::run_agreed(world, what, [&] {
    if (!pf.lead) return;
    pf.file = std::make_unique<h5::File>(h5::File::create(pf.tmp));
    reserve_space(pf.tmp, checkpoint_bytes(model.params(), record));
  });
  write_tensors_gathered(pf.file.get(), model.params(), opt, groups, what);
  comm::run_agreed(world, what, [&] {
    if (!pf.lead) return;
    write_meta(*pf.file, info, record, opt);
    std::unique_ptr<h5::File> f = std::move(pf.file);
    f->close();
  });
}

}  // namespace

void save_checkpoint(const std::string& path, const RunConfig& cfg, Model& model, AdamW& opt,
                     const CheckpointState& state, const RoutingRecord& record,
                     comm::ProcessGroups& groups, CheckpointWrite mode) {
  const comm::WatchedOp watched("checkpoint write", path);
  comm::Communicator& world = *groups.world;
  const std::string what = fmt::format("checkpoint {}", path);
  PartialFile pf{nullptr, path + ".tmp", world.rank() == 0};
  const bool parallel = mode == CheckpointWrite::Auto && world.size() > 1 &&
                        ROUTEMOE_HAVE_PARALLEL_HDF5 && comm::mpi_active();
  comm::run_agreed(world, what, [&] {
    check_finite_state(model.params(), opt);
    if (!pf.lead) return;
    const fs::path dir = fs::path(path).parent_path();
    fs::create_directories(dir.empty() ? fs::path(".") : dir);
    if (!state.run_id.empty() && fs::exists(path)) {
      const std::string why = foreign_reason(path, state.run_id);
      RM_CHECK_KIND(
          Io, why.empty(),
          fmt::format("{} exists and is not this run's ({}); not overwriting it", path, why));
    }
  });
  const runfile::CheckpointInfo info = checkpoint_info(cfg, model, state, groups);
  try {
    if (parallel) {
      write_parallel(pf, info, record, model, opt, groups, what);
    } else {
      write_gathered(pf, info, record, model, opt, groups, what);
    }
    comm::run_agreed(world, what, [&] {
      if (!pf.lead) return;
      release_reserve(pf.tmp);
      std::error_code ec;
      fs::rename(pf.tmp, path, ec);
      RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {} to {}: {}", pf.tmp, path, ec.message()));
    });
  } catch (...) {
    pf.discard();
    throw;
  }
}

CheckpointState load_checkpoint(const std::string& path, Model& model, AdamW& opt) {
  RM_CHECK_KIND(Data, fs::exists(path), fmt::format("{}: no such checkpoint file", path));
  RM_CHECK_KIND(Data, fs::is_regular_file(path), fmt::format("{}: not a file", path));
  return runfile::reading(path, [&]() {
    const h5::File f = h5::File::open_read(path);
    runfile::check_header(f, path, {runfile::Kind::Checkpoint});
    const runfile::CheckpointInfo info = runfile::read_checkpoint_info(f);
    // Same tensor shapes are not enough: a gate trained for one router must not silently
    // drive another.
    const std::vector<std::string> routers = model.config().expanded_routers();
    RM_CHECK_KIND(Data, info.routers == routers,
                  fmt::format("{}: written for routers {}, this model uses {}", path,
                              runfile::join_routers(info.routers), runfile::join_routers(routers)));
    CheckpointState st;
    st.step = info.step;
    st.epoch = info.epoch;
    st.data_seed = info.data_seed;
    st.run_id = info.run_id;
    float* m_all = opt.m().data<float>();
    float* v_all = opt.v().data<float>();
    for (Param& p : model.params().params()) {
      float* dst[3] = {p.value.data<float>(), m_all + p.offset, v_all + p.offset};
      for (int t = 0; t < 3; ++t) {
        const std::string name = fmt::format("{}/{}", runfile::kTensorGroups[t], p.name);
        RM_CHECK_KIND(
            Data, f.exists(name),
            fmt::format("{}: missing dataset {} (a checkpoint of a different model or router?)",
                        path, name));
        const Shape shape = f.shape_of(name);
        RM_CHECK_KIND(Data, shape == p.global_shape,
                      fmt::format("{}: {} has shape {}, the model needs {} (different model shape)",
                                  path, name, shape_str(shape), shape_str(p.global_shape)));
        const std::int64_t rows = p.local_shape.empty() ? 1 : p.local_shape[0];
        const std::vector<float> data =
            p.expert ? f.read_f32_rows(name, p.expert_begin, rows) : f.read_f32(name);
        RM_CHECK_KIND(Data, static_cast<std::int64_t>(data.size()) == p.value.numel(),
                      fmt::format("{}: {} has {} values, expected {}", path, name, data.size(),
                                  p.value.numel()));
        for (float x : data) {
          RM_CHECK_KIND(Data, std::isfinite(x),
                        fmt::format("{}: {} holds a non-finite value", path, name));
        }
        std::copy(data.begin(), data.end(), dst[t]);
      }
    }
    opt.set_steps_taken(f.attr_int("/optim", "steps_taken"));
    return st;
  });
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<std::int64_t, std::string>> found;
  if (!fs::is_directory(dir)) return {};
  const std::regex pattern("ckpt_([0-9]{1,18})\\.h5");
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, m, pattern)) {
      found.emplace_back(std::stoll(m[1].str()), entry.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [step, p] : found) out.push_back(p);
  return out;
}

RunCheckpoints list_run_checkpoints(const std::string& dir, const std::string& run_id) {
  RunCheckpoints out;
  for (const std::string& path : list_checkpoints(dir)) {
    const std::string why = foreign_reason(path, run_id);
    if (why.empty()) {
      out.own.push_back(path);
    } else {
      out.foreign.push_back(fmt::format("{} ({})", fs::path(path).filename().string(), why));
    }
  }
  return out;
}

void check_foreign_checkpoints(const std::string& dir, const std::string& run_id,
                               std::int64_t from_step, std::int64_t to_step) {
  for (const std::string& path : list_checkpoints(dir)) {
    const std::int64_t step = step_of(path);
    if (step <= from_step || step > to_step) continue;
    const std::string why = foreign_reason(path, run_id);
    RM_CHECK_KIND(Config, why.empty(),
                  fmt::format("{} is not this run's ({}); run {} would write a checkpoint of the "
                              "same step there: give each run its own checkpoint.dir (or move "
                              "the file)",
                              path, why, run_id));
  }
}

void prune_checkpoints(const std::string& dir, std::int64_t keep_last, const std::string& run_id) {
  const std::vector<std::string> own = list_run_checkpoints(dir, run_id).own;
  const auto keep = static_cast<std::size_t>(std::max<std::int64_t>(1, keep_last));
  for (std::size_t i = 0; i + keep < own.size(); ++i) {
    std::error_code ec;
    fs::remove(own[i], ec);
  }
}

void truncate_run_after(const std::string& metrics_path, const std::string& trace_path,
                        std::int64_t step) {
  std::error_code ec;
  if (fs::exists(metrics_path)) {
    std::ifstream in(metrics_path);
    const std::string tmp = metrics_path + ".tmp";
    std::ofstream out(tmp, std::ios::trunc);
    const std::regex step_field("^\\{\"step\": ([0-9]+)");
    std::string line;
    while (std::getline(in, line)) {
      std::smatch m;
      if (std::regex_search(line, m, step_field) && std::stoll(m[1].str()) > step) continue;
      out << line << "\n";
    }
    out.close();
    RM_CHECK_KIND(Io, !out.fail(), fmt::format("cannot write {}", tmp));
    fs::rename(tmp, metrics_path, ec);
    RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {}: {}", tmp, ec.message()));
  }
  // Trace records of later steps: the kept ones are rewritten (runfile::truncate_trace).
  if (fs::exists(trace_path)) runfile::truncate_trace(trace_path, step);
}

void append_trace(const std::string& path, const RunConfig& cfg,
                  const std::vector<std::int32_t>& probe, const RoutingRecord& record,
                  const std::string& run_id) {
  const comm::WatchedOp watched("trace append", path);
  const ModelConfig& mc = cfg.model;
  runfile::TraceInfo info;
  info.n_moe_layers = mc.n_moe_layers();
  info.top_k = mc.top_k;
  info.n_experts = mc.n_experts;
  info.seq_len = mc.seq_len;
  info.d_model = mc.d_model;
  info.routers = mc.expanded_routers();
  info.config = cfg.to_toml();
  info.probe_tokens = static_cast<std::int64_t>(probe.size());
  info.run_id = run_id;
  runfile::append_trace_record(path, info, probe.data(), record);
}

void check_trace_continues(const std::string& path, const RunConfig& cfg,
                           const std::vector<std::int32_t>& probe, const std::string& run_id) {
  if (!fs::exists(path)) return;
  const ModelConfig& mc = cfg.model;
  const auto [info, tokens] = runfile::reading(path, [&] {
    const h5::File f = h5::File::open_read(path);
    runfile::check_header(f, path, {runfile::Kind::Trace});
    return std::pair{runfile::read_trace_info(f), f.read_i32(runfile::kProbeTokens)};
  });
  auto refuse = [&](const std::string& what, const std::string& had, const std::string& has) {
    RM_FAIL(Config, fmt::format("cannot resume into {}: its records have {} {}, this run has {}; "
                                "the records would not be comparable (resume with the same "
                                "settings, or start a new train.out_dir)",
                                path, what, had, has));
  };
  if (!info.run_id.empty() && info.run_id != run_id) refuse("run id", info.run_id, run_id);
  const std::vector<std::pair<const char*, std::pair<std::int64_t, std::int64_t>>> facts = {
      {"model.top_k", {info.top_k, mc.top_k}},
      {"model.n_experts", {info.n_experts, mc.n_experts}},
      {"MoE layers", {info.n_moe_layers, mc.n_moe_layers()}},
      {"model.seq_len", {info.seq_len, mc.seq_len}},
      {"probe tokens (checkpoint.probe_tokens, rounded down to a multiple of seq_len x ranks)",
       {info.probe_tokens, static_cast<std::int64_t>(probe.size())}}};
  for (const auto& [what, v] : facts) {
    if (v.first != v.second) refuse(what, std::to_string(v.first), std::to_string(v.second));
  }
  const std::vector<std::string> routers = mc.expanded_routers();
  if (info.routers != routers) {
    refuse("routers", runfile::join_routers(info.routers), runfile::join_routers(routers));
  }
  if (!std::equal(tokens.begin(), tokens.end(), probe.begin(), probe.end())) {
    refuse("probe tokens", "other token ids", "different ones (data.path or val split changed)");
  }
}

}  // namespace routemoe
