#include "framework/train/checkpoint.h"

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <regex>

#include "comm/mpi_runtime.h"
#include "framework/error.h"
#include "framework/h5.h"
#include "framework/optim.h"
#include "framework/runfile.h"
#include "layers/model.h"

namespace routemoe {

namespace fs = std::filesystem;

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
  // Router statistics (AC weights) over the whole probe set, not this rank's slice, so that the
  // record does not depend on the rank count or ep_size.
  model.forward(in, targets.data(), rows, seq_len, nullptr, /*dropless=*/true, &world);
  const std::vector<RoutingView> views = model.last_routing();
  RoutingRecord rec;
  rec.tokens = sequences * seq_len;
  rec.top_k = mc.top_k;
  rec.d_model = mc.d_model;
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
// experts (edp rank 0), one chunk per expert so that every chunk has one writer. Collective.
void write_tensors_parallel(h5::File& f, ParamStore& ps, AdamW& opt, comm::ProcessGroups& groups) {
  const bool lead = groups.world->rank() == 0;
  const bool expert_writer = groups.edp->rank() == 0;
  for (const Param& p : ps.params()) {
    const std::int64_t rows = p.local_shape.empty() ? 1 : p.local_shape[0];
    const std::int64_t begin = p.expert ? p.expert_begin : 0;
    const bool writes = p.expert ? expert_writer : lead;
    const auto src = tensor_sources(p, opt);
    for (int t = 0; t < 3; ++t) {
      const std::string name = fmt::format("{}/{}", runfile::kTensorGroups[t], p.name);
      f.create_f32(name, p.global_shape, p.expert ? 1 : 0);
      f.write_f32_rows(name, begin, writes ? rows : 0, src[static_cast<std::size_t>(t)]);
    }
  }
}

// Without parallel HDF5: every expert tensor is gathered over the ep group and rank 0 (the only
// rank with a file, `f` null elsewhere) writes it. Collective over the ep group.
void write_tensors_gathered(h5::File* f, ParamStore& ps, AdamW& opt, comm::ProcessGroups& groups) {
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
      if (f == nullptr) continue;
      const std::string name = fmt::format("{}/{}", runfile::kTensorGroups[t], p.name);
      f->create_f32(name, p.global_shape, p.expert ? 1 : 0);
      f->write_f32_rows(name, 0, p.global_shape.empty() ? 1 : p.global_shape[0], data);
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
  return info;
}

// The routing record (identical on all ranks) and the attributes.
void write_meta(h5::File& f, const runfile::CheckpointInfo& info, const RoutingRecord& record,
                const AdamW& opt) {
  runfile::write_routing(f, runfile::kRoutingGroup, record);
  runfile::write_checkpoint_info(f, info);
  f.set_attr("/optim", "steps_taken", opt.steps_taken());
}

}  // namespace

void save_checkpoint(const std::string& path, const RunConfig& cfg, Model& model, AdamW& opt,
                     const CheckpointState& state, const RoutingRecord& record,
                     comm::ProcessGroups& groups, CheckpointWrite mode) {
  comm::Communicator& world = *groups.world;
  const bool lead = world.rank() == 0;
  const std::string tmp = path + ".tmp";
  const bool parallel = mode == CheckpointWrite::Auto && world.size() > 1 &&
                        ROUTEMOE_HAVE_PARALLEL_HDF5 && comm::mpi_active();
  const fs::path dir = fs::path(path).parent_path();
  if (lead) fs::create_directories(dir.empty() ? fs::path(".") : dir);
  world.barrier();
  const runfile::CheckpointInfo info = checkpoint_info(cfg, model, state, groups);
  if (parallel) {
    MPI_Comm comm = MPI_COMM_WORLD;
    h5::File f = h5::File::create_parallel(tmp, &comm);
    write_tensors_parallel(f, model.params(), opt, groups);
    write_meta(f, info, record, opt);  // collective: every rank writes the same values
    f.close();
  } else {
    std::unique_ptr<h5::File> f;
    if (lead) f = std::make_unique<h5::File>(h5::File::create(tmp));
    write_tensors_gathered(f.get(), model.params(), opt, groups);
    if (lead) {
      write_meta(*f, info, record, opt);
      f->close();
    }
  }
  world.barrier();
  if (lead) {
    std::error_code ec;
    fs::rename(tmp, path, ec);
    RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
  }
  world.barrier();
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
  const std::regex pattern("ckpt_([0-9]+)\\.h5");
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

void prune_checkpoints(const std::string& dir, std::int64_t keep_last) {
  const std::vector<std::string> all = list_checkpoints(dir);
  for (std::size_t i = 0;
       i + static_cast<std::size_t>(std::max<std::int64_t>(1, keep_last)) < all.size(); ++i) {
    std::error_code ec;
    fs::remove(all[i], ec);
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
      if (std::regex_search(line, m, step_field) && std::stoll(m[1].str()) >= step) continue;
      out << line << "\n";
    }
    out.close();
    RM_CHECK_KIND(Io, !out.fail(), fmt::format("cannot write {}", tmp));
    fs::rename(tmp, metrics_path, ec);
    RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {}: {}", tmp, ec.message()));
  }
  if (fs::exists(trace_path)) {
    const std::string tmp = trace_path + ".tmp";
    fs::copy_file(trace_path, tmp, fs::copy_options::overwrite_existing);
    h5::File f = h5::File::open_rw(tmp);
    bool changed = false;
    for (const std::string& group : runfile::trace_record_groups(f)) {  // only a tail goes
      if (f.attr_int(group, "step") > step) {
        RM_HDF5_CHECK(H5Ldelete(f.id(), group.c_str(), H5P_DEFAULT));
        changed = true;
      }
    }
    f.close();
    if (changed) {
      fs::rename(tmp, trace_path, ec);
      RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {}: {}", tmp, ec.message()));
    } else {
      fs::remove(tmp, ec);
    }
  }
}

void append_trace(const std::string& path, const RunConfig& cfg,
                  const std::vector<std::int32_t>& probe, const RoutingRecord& record) {
  const std::string tmp = path + ".tmp";
  std::error_code ec;
  fs::remove(tmp, ec);
  if (fs::exists(path)) {
    fs::copy_file(path, tmp, fs::copy_options::overwrite_existing);
    h5::File f = h5::File::open_rw(tmp);
    const auto index = static_cast<std::int64_t>(runfile::trace_record_groups(f).size());
    runfile::write_routing(f, runfile::trace_record_group(index), record);
    f.close();
  } else {
    h5::File f = h5::File::create(tmp);
    const ModelConfig& mc = cfg.model;
    runfile::TraceInfo info;
    info.n_moe_layers = mc.n_moe_layers();
    info.top_k = mc.top_k;
    info.n_experts = mc.n_experts;
    info.seq_len = mc.seq_len;
    info.routers = mc.expanded_routers();
    info.config = cfg.to_toml();
    info.probe_tokens = static_cast<std::int64_t>(probe.size());
    runfile::write_trace_info(f, info, probe.data());
    runfile::write_routing(f, runfile::trace_record_group(0), record);
    f.close();
  }
  fs::rename(tmp, path, ec);
  RM_CHECK_KIND(Io, !ec, fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
}

}  // namespace routemoe
