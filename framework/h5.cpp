#include "framework/h5.h"

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "framework/error.h"

namespace routemoe::h5 {

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    Handle tmp(std::move(*this));
    id_ = o.id_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

hid_t Handle::release() noexcept {
  const hid_t id = id_;
  id_ = H5I_INVALID_HID;
  return id;
}

Handle::~Handle() {
  if (id_ < 0) return;
  herr_t rc = 0;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      rc = H5Fclose(id_);
      break;
    case H5I_GROUP:
      rc = H5Gclose(id_);
      break;
    case H5I_DATASET:
      rc = H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      rc = H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      rc = H5Tclose(id_);
      break;
    case H5I_ATTR:
      rc = H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      rc = H5Pclose(id_);
      break;
    default:
      rc = H5Idec_ref(id_);
      break;
  }
  if (rc < 0) std::fprintf(stderr, "routemoe: closing an HDF5 object failed\n");
}

namespace {

// A failed write: Error(Io) with the system's cause when the call set errno, else Error(Hdf5).
[[noreturn]] void write_failed(const std::string& path, const std::string& obj, const char* call,
                               int err) {
  const std::string hdf5 = detail::hdf5_error_message();
  if (err != 0) {
    RM_FAIL(Io, fmt::format("{}: cannot write {}: {} (errno {}; HDF5: {}: {})", path, obj,
                            std::strerror(err), err, call, hdf5));
  }
  RM_FAIL(Hdf5, fmt::format("{}: cannot write {}: {}: {}", path, obj, call, hdf5));
}

// Runs the HDF5 call `fn` with errno cleared; a negative result is a write_failed.
template <typename Fn>
auto checked_write(const std::string& path, const std::string& obj, const char* call, Fn&& fn) {
  errno = 0;
  const auto rc = fn();
  const int err = errno;
  if (rc < 0) write_failed(path, obj, call, err);
  return rc;
}

void quiet() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

std::vector<hsize_t> dims_of(const Shape& shape) {
  std::vector<hsize_t> d;
  for (std::int64_t s : shape) d.push_back(static_cast<hsize_t>(s));
  return d;
}

Handle make_space(const Shape& shape) {
  if (shape.empty()) return Handle(RM_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  const auto d = dims_of(shape);
  return Handle(RM_HDF5_CHECK(H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr)));
}
}  // namespace

namespace {
// Newest file-format features: checksummed metadata, so damaged headers are detected.
Handle new_fapl() {
  Handle fapl(RM_HDF5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
  RM_HDF5_CHECK(H5Pset_libver_bounds(fapl.id(), H5F_LIBVER_LATEST, H5F_LIBVER_LATEST));
  return fapl;
}
}  // namespace

File File::create(const std::string& path) {
  quiet();
  Handle fapl = new_fapl();
  Handle h(checked_write(path, "the file", "H5Fcreate", [&] {
    return H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id());
  }));
  return File(std::move(h), path);
}

File File::create_parallel(const std::string& path, const void* mpi_comm) {
#if ROUTEMOE_HAVE_PARALLEL_HDF5
  quiet();
  Handle fapl = new_fapl();
  RM_HDF5_CHECK(
      H5Pset_fapl_mpio(fapl.id(), *static_cast<const MPI_Comm*>(mpi_comm), MPI_INFO_NULL));
  Handle h(checked_write(path, "the file (parallel)", "H5Fcreate", [&] {
    return H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id());
  }));
  return File(std::move(h), path, true);
#else
  (void)mpi_comm;
  RM_FAIL(Hdf5, fmt::format("{}: parallel HDF5 is not available in this build", path));
#endif
}

File File::open_read(const std::string& path) {
  quiet();
  Handle h(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!h.valid()) {
    const std::string why = detail::hdf5_error_message();
    // A file whose appender was killed still carries its "open for writing" mark; SWMR-read
    // mode reads it (what was flushed is consistent, see open_append).
    if (why.find("already open for write") != std::string::npos) {
      Handle fapl = new_fapl();
      h = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl.id()));
    }
    RM_CHECK_KIND(Hdf5, h.valid(), fmt::format("{}: not a readable HDF5 file ({})", path, why));
  }
  return File(std::move(h), path);
}

File File::open_rw(const std::string& path) {
  quiet();
  Handle h(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
  RM_CHECK_KIND(Hdf5, h.valid(),
                fmt::format("{}: cannot open HDF5 file for writing ({})", path,
                            detail::hdf5_error_message()));
  return File(std::move(h), path);
}

File File::open_append(const std::string& path) {
  quiet();
  Handle fapl = new_fapl();
  // HDF5's own property (the one h5clear sets): clear the status marks a killed writer left.
  hbool_t clear = 1;
  RM_HDF5_CHECK(H5Pset(fapl.id(), "clear_status_flags", &clear));
  Handle h(H5Fopen(path.c_str(), H5F_ACC_RDWR | H5F_ACC_SWMR_WRITE, fapl.id()));
  RM_CHECK_KIND(Hdf5, h.valid(),
                fmt::format("{}: cannot open HDF5 file for appending ({})", path,
                            detail::hdf5_error_message()));
  // A killed writer may have written past the end of space its superblock recorded: allocate
  // after all of it.
  RM_HDF5_CHECK(H5Fincrement_filesize(h.id(), 0));
  return File(std::move(h), path);
}

void File::flush() {
  checked_write(path_, "the file", "H5Fflush",
                [&] { return H5Fflush(handle_.id(), H5F_SCOPE_GLOBAL); });
}

void File::close() {
  if (!handle_.valid()) return;
  flush();
  const hid_t id = handle_.release();
  checked_write(path_, "the file", "H5Fclose", [&] { return H5Fclose(id); });
}

void File::abandon() noexcept {
  handle_.release();
}

bool File::exists(const std::string& obj) const {
  // Walk the path so that a missing intermediate group is "false", not an error.
  std::string prefix;
  std::size_t start = obj.front() == '/' ? 1 : 0;
  while (start <= obj.size()) {
    const std::size_t slash = obj.find('/', start);
    const std::string part =
        obj.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    prefix += "/" + part;
    if (H5Lexists(id(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

namespace {
// Dataset creation properties: chunked (chunk_rows rows of dim 0, 0 = all) with Fletcher32
// checksums, so flipped bytes in the data are detected on read. Scalars and empty datasets
// stay contiguous (nothing to protect).
Handle checked_dcpl(const Shape& shape, std::int64_t chunk_rows) {
  Handle dcpl(RM_HDF5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  if (shape.empty() || shape_numel(shape) == 0) return dcpl;
  std::vector<hsize_t> chunk = dims_of(shape);
  if (chunk_rows > 0 && chunk_rows < shape[0]) chunk[0] = static_cast<hsize_t>(chunk_rows);
  RM_HDF5_CHECK(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()));
  RM_HDF5_CHECK(H5Pset_fletcher32(dcpl.id()));
  return dcpl;
}

Handle link_props() {
  Handle lcpl(RM_HDF5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
  RM_HDF5_CHECK(H5Pset_create_intermediate_group(lcpl.id(), 1));
  return lcpl;
}

Handle transfer_props(bool parallel) {
  Handle dxpl(RM_HDF5_CHECK(H5Pcreate(H5P_DATASET_XFER)));
#if ROUTEMOE_HAVE_PARALLEL_HDF5
  if (parallel) RM_HDF5_CHECK(H5Pset_dxpl_mpio(dxpl.id(), H5FD_MPIO_COLLECTIVE));
#else
  (void)parallel;
#endif
  return dxpl;
}
}  // namespace

void File::write_raw(const std::string& obj, hid_t mem_type, hid_t file_type, const void* data,
                     const Shape& shape) {
  Handle lcpl = link_props();
  Handle space = make_space(shape);
  Handle dcpl = checked_dcpl(shape, 0);
  Handle ds(checked_write(path_, obj, "H5Dcreate2", [&] {
    return H5Dcreate2(id(), obj.c_str(), file_type, space.id(), lcpl.id(), dcpl.id(), H5P_DEFAULT);
  }));
  if (shape_numel(shape) > 0) {
    Handle dxpl = transfer_props(parallel_);
    checked_write(path_, obj, "H5Dwrite",
                  [&] { return H5Dwrite(ds.id(), mem_type, H5S_ALL, H5S_ALL, dxpl.id(), data); });
  }
}

void File::create_f32(const std::string& obj, const Shape& global_shape, std::int64_t chunk_rows) {
  Handle lcpl = link_props();
  Handle space = make_space(global_shape);
  Handle dcpl = checked_dcpl(global_shape, chunk_rows);
  Handle ds(checked_write(path_, obj, "H5Dcreate2", [&] {
    return H5Dcreate2(id(), obj.c_str(), H5T_IEEE_F32LE, space.id(), lcpl.id(), dcpl.id(),
                      H5P_DEFAULT);
  }));
}

void File::write_f32_rows(const std::string& obj, std::int64_t row_begin, std::int64_t rows,
                          const float* data) {
  Handle ds(RM_HDF5_CHECK(H5Dopen2(id(), obj.c_str(), H5P_DEFAULT)));
  Handle fspace(RM_HDF5_CHECK(H5Dget_space(ds.id())));
  const int nd = RM_HDF5_CHECK(H5Sget_simple_extent_ndims(fspace.id()));
  std::vector<hsize_t> dims(static_cast<std::size_t>(nd));
  RM_HDF5_CHECK(H5Sget_simple_extent_dims(fspace.id(), dims.data(), nullptr));
  RM_CHECK_KIND(Shape,
                nd >= 1 && row_begin >= 0 && static_cast<hsize_t>(row_begin + rows) <= dims[0],
                fmt::format("{}: rows [{}, {}) of {}", path_, row_begin, row_begin + rows, obj));
  Handle dxpl = transfer_props(parallel_);
  if (rows == 0) {
    if (!parallel_) return;
    RM_HDF5_CHECK(H5Sselect_none(fspace.id()));
    Handle mspace(RM_HDF5_CHECK(H5Screate(H5S_NULL)));
    checked_write(path_, obj, "H5Dwrite", [&] {
      return H5Dwrite(ds.id(), H5T_NATIVE_FLOAT, mspace.id(), fspace.id(), dxpl.id(), data);
    });
    return;
  }
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = static_cast<hsize_t>(row_begin);
  count[0] = static_cast<hsize_t>(rows);
  RM_HDF5_CHECK(H5Sselect_hyperslab(fspace.id(), H5S_SELECT_SET, start.data(), nullptr,
                                    count.data(), nullptr));
  Handle mspace(RM_HDF5_CHECK(H5Screate_simple(nd, count.data(), nullptr)));
  checked_write(path_, obj, "H5Dwrite", [&] {
    return H5Dwrite(ds.id(), H5T_NATIVE_FLOAT, mspace.id(), fspace.id(), dxpl.id(), data);
  });
}

std::vector<float> File::read_f32_rows(const std::string& obj, std::int64_t row_begin,
                                       std::int64_t rows) const {
  const Shape shape = shape_of(obj);
  RM_CHECK_KIND(Data, !shape.empty() && row_begin >= 0 && row_begin + rows <= shape[0],
                fmt::format("{}: dataset {} has shape {}, cannot read rows [{}, {})", path_, obj,
                            shape_str(shape), row_begin, row_begin + rows));
  Shape part = shape;
  part[0] = rows;
  std::vector<float> out(static_cast<std::size_t>(shape_numel(part)));
  if (out.empty()) return out;
  Handle ds(RM_HDF5_CHECK(H5Dopen2(id(), obj.c_str(), H5P_DEFAULT)));
  Handle fspace(RM_HDF5_CHECK(H5Dget_space(ds.id())));
  std::vector<hsize_t> start(shape.size(), 0), count = dims_of(part);
  start[0] = static_cast<hsize_t>(row_begin);
  RM_HDF5_CHECK(H5Sselect_hyperslab(fspace.id(), H5S_SELECT_SET, start.data(), nullptr,
                                    count.data(), nullptr));
  Handle mspace(
      RM_HDF5_CHECK(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr)));
  const herr_t rc =
      H5Dread(ds.id(), H5T_NATIVE_FLOAT, mspace.id(), fspace.id(), H5P_DEFAULT, out.data());
  RM_CHECK_KIND(
      Data, rc >= 0,
      fmt::format("{}: cannot read dataset {} (checksum mismatch or damaged file)", path_, obj));
  return out;
}

namespace {
hid_t mem_type_of(File::Elem e) {
  switch (e) {
    case File::Elem::I32:
      return H5T_NATIVE_INT32;
    case File::Elem::I64:
      return H5T_NATIVE_INT64;
    case File::Elem::F32:
      return H5T_NATIVE_FLOAT;
    case File::Elem::U8:
      return H5T_NATIVE_UINT8;
    case File::Elem::Str16:
      break;
  }
  return H5T_C_S1;
}

// The type of `e` in the file (and in memory: strings are copied with their file type).
Handle type_of(File::Elem e, bool in_file) {
  if (e == File::Elem::Str16) {
    Handle t(RM_HDF5_CHECK(H5Tcopy(H5T_C_S1)));
    RM_HDF5_CHECK(H5Tset_size(t.id(), 16));
    RM_HDF5_CHECK(H5Tset_strpad(t.id(), H5T_STR_NULLPAD));
    RM_HDF5_CHECK(H5Tset_cset(t.id(), H5T_CSET_UTF8));
    return t;
  }
  if (!in_file) return Handle(RM_HDF5_CHECK(H5Tcopy(mem_type_of(e))));
  switch (e) {
    case File::Elem::I32:
      return Handle(RM_HDF5_CHECK(H5Tcopy(H5T_STD_I32LE)));
    case File::Elem::I64:
      return Handle(RM_HDF5_CHECK(H5Tcopy(H5T_STD_I64LE)));
    case File::Elem::F32:
      return Handle(RM_HDF5_CHECK(H5Tcopy(H5T_IEEE_F32LE)));
    default:
      return Handle(RM_HDF5_CHECK(H5Tcopy(H5T_STD_U8LE)));
  }
}

std::vector<hsize_t> extent_of(hid_t ds) {
  Handle space(RM_HDF5_CHECK(H5Dget_space(ds)));
  const int nd = RM_HDF5_CHECK(H5Sget_simple_extent_ndims(space.id()));
  std::vector<hsize_t> d(static_cast<std::size_t>(nd));
  if (nd > 0) RM_HDF5_CHECK(H5Sget_simple_extent_dims(space.id(), d.data(), nullptr));
  return d;
}

// The hyperslab of rows [begin, begin + n) of a dataset of extent `dims`, and its memory space.
std::pair<Handle, Handle> row_spaces(hid_t ds, const std::vector<hsize_t>& dims, std::int64_t begin,
                                     std::int64_t n) {
  Handle fspace(RM_HDF5_CHECK(H5Dget_space(ds)));
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = static_cast<hsize_t>(begin);
  count[0] = static_cast<hsize_t>(n);
  RM_HDF5_CHECK(H5Sselect_hyperslab(fspace.id(), H5S_SELECT_SET, start.data(), nullptr,
                                    count.data(), nullptr));
  Handle mspace(
      RM_HDF5_CHECK(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr)));
  return {std::move(fspace), std::move(mspace)};
}
}  // namespace

void File::create_rows(const std::string& obj, Elem elem, const Shape& row,
                       std::int64_t chunk_rows) {
  RM_CHECK(chunk_rows > 0, "create_rows needs chunk_rows > 0");
  std::vector<hsize_t> dims{0}, maxdims{H5S_UNLIMITED}, chunk{static_cast<hsize_t>(chunk_rows)};
  for (std::int64_t s : row) {
    dims.push_back(static_cast<hsize_t>(s));
    maxdims.push_back(static_cast<hsize_t>(s));
    chunk.push_back(static_cast<hsize_t>(std::max<std::int64_t>(1, s)));
  }
  Handle space(
      RM_HDF5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.data())));
  Handle dcpl(RM_HDF5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  RM_HDF5_CHECK(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()));
  RM_HDF5_CHECK(H5Pset_fletcher32(dcpl.id()));
  Handle lcpl = link_props();
  Handle type = type_of(elem, true);
  Handle ds(RM_HDF5_CHECK(
      H5Dcreate2(id(), obj.c_str(), type.id(), space.id(), lcpl.id(), dcpl.id(), H5P_DEFAULT)));
}

std::int64_t File::rows(const std::string& obj) const {
  const Shape s = shape_of(obj);
  RM_CHECK_KIND(Data, !s.empty(), fmt::format("{}: dataset {} is a scalar", path_, obj));
  return s[0];
}

void File::write_rows(const std::string& obj, Elem elem, std::int64_t begin, std::int64_t n,
                      const void* data) {
  Handle ds(RM_HDF5_CHECK(H5Dopen2(id(), obj.c_str(), H5P_DEFAULT)));
  std::vector<hsize_t> dims = extent_of(ds.id());
  RM_CHECK(!dims.empty() && begin >= 0 && n >= 0,
           fmt::format("write_rows({}, {}, {})", obj, begin, n));
  if (n == 0) return;
  if (dims[0] < static_cast<hsize_t>(begin + n)) {
    dims[0] = static_cast<hsize_t>(begin + n);
    RM_HDF5_CHECK(H5Dset_extent(ds.id(), dims.data()));
  }
  auto [fspace, mspace] = row_spaces(ds.id(), dims, begin, n);
  Handle type = type_of(elem, false);
  RM_HDF5_CHECK(H5Dwrite(ds.id(), type.id(), mspace.id(), fspace.id(), H5P_DEFAULT, data));
}

void File::read_rows(const std::string& obj, Elem elem, std::int64_t begin, std::int64_t n,
                     void* data) const {
  RM_CHECK_KIND(Data, exists(obj), fmt::format("{}: missing dataset {}", path_, obj));
  Handle ds(RM_HDF5_CHECK(H5Dopen2(id(), obj.c_str(), H5P_DEFAULT)));
  const std::vector<hsize_t> dims = extent_of(ds.id());
  RM_CHECK_KIND(Data,
                !dims.empty() && begin >= 0 && n >= 0 && static_cast<hsize_t>(begin + n) <= dims[0],
                fmt::format("{}: dataset {} has {} rows, cannot read rows [{}, {})", path_, obj,
                            dims.empty() ? 0 : dims[0], begin, begin + n));
  if (n == 0) return;
  auto [fspace, mspace] = row_spaces(ds.id(), dims, begin, n);
  Handle type = type_of(elem, false);
  const herr_t rc = H5Dread(ds.id(), type.id(), mspace.id(), fspace.id(), H5P_DEFAULT, data);
  RM_CHECK_KIND(
      Data, rc >= 0,
      fmt::format("{}: cannot read dataset {} (checksum mismatch, damaged file or wrong type)",
                  path_, obj));
}

void File::write_f32(const std::string& obj, const float* data, const Shape& shape) {
  write_raw(obj, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, data, shape);
}
void File::write_i32(const std::string& obj, const std::int32_t* data, const Shape& shape) {
  write_raw(obj, H5T_NATIVE_INT32, H5T_STD_I32LE, data, shape);
}
void File::write_u8(const std::string& obj, const std::uint8_t* data, const Shape& shape) {
  write_raw(obj, H5T_NATIVE_UINT8, H5T_STD_U8LE, data, shape);
}
void File::write_i64(const std::string& obj, const std::int64_t* data, const Shape& shape) {
  write_raw(obj, H5T_NATIVE_INT64, H5T_STD_I64LE, data, shape);
}
void File::write_scalar(const std::string& obj, double value) {
  write_raw(obj, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, &value, {});
}

void File::set_attr(const std::string& obj, const std::string& name, const std::string& value) {
  Handle type(RM_HDF5_CHECK(H5Tcopy(H5T_C_S1)));
  RM_HDF5_CHECK(H5Tset_size(type.id(), std::max<std::size_t>(1, value.size())));
  RM_HDF5_CHECK(H5Tset_cset(type.id(), H5T_CSET_UTF8));
  Handle space(RM_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  if (H5Aexists_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT) > 0) {
    RM_HDF5_CHECK(H5Adelete_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT));
  }
  const std::string where = fmt::format("attribute {} of {}", name, obj);
  Handle attr(checked_write(path_, where, "H5Acreate_by_name", [&] {
    return H5Acreate_by_name(id(), obj.c_str(), name.c_str(), type.id(), space.id(), H5P_DEFAULT,
                             H5P_DEFAULT, H5P_DEFAULT);
  }));
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  checked_write(path_, where, "H5Awrite",
                [&] { return H5Awrite(attr.id(), type.id(), padded.data()); });
}

void File::set_attr(const std::string& obj, const std::string& name, std::int64_t value) {
  Handle space(RM_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  if (H5Aexists_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT) > 0) {
    RM_HDF5_CHECK(H5Adelete_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT));
  }
  const std::string where = fmt::format("attribute {} of {}", name, obj);
  Handle attr(checked_write(path_, where, "H5Acreate_by_name", [&] {
    return H5Acreate_by_name(id(), obj.c_str(), name.c_str(), H5T_STD_I64LE, space.id(),
                             H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  }));
  checked_write(path_, where, "H5Awrite",
                [&] { return H5Awrite(attr.id(), H5T_NATIVE_INT64, &value); });
}

bool File::has_attr(const std::string& obj, const std::string& name) const {
  return exists(obj == "/" ? std::string("/") : obj) &&
         H5Aexists_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

Shape File::shape_of(const std::string& obj) const {
  RM_CHECK_KIND(Data, exists(obj), fmt::format("{}: missing dataset {}", path_, obj));
  Handle ds(RM_HDF5_CHECK(H5Dopen2(id(), obj.c_str(), H5P_DEFAULT)));
  Handle space(RM_HDF5_CHECK(H5Dget_space(ds.id())));
  const int nd = RM_HDF5_CHECK(H5Sget_simple_extent_ndims(space.id()));
  std::vector<hsize_t> d(static_cast<std::size_t>(nd));
  if (nd > 0) RM_HDF5_CHECK(H5Sget_simple_extent_dims(space.id(), d.data(), nullptr));
  Shape s;
  for (hsize_t v : d) s.push_back(static_cast<std::int64_t>(v));
  return s;
}

void File::read_raw(const std::string& obj, hid_t mem_type, void* data, std::int64_t expect) const {
  Handle ds(RM_HDF5_CHECK(H5Dopen2(id(), obj.c_str(), H5P_DEFAULT)));
  Handle space(RM_HDF5_CHECK(H5Dget_space(ds.id())));
  const auto n = RM_HDF5_CHECK(H5Sget_simple_extent_npoints(space.id()));
  RM_CHECK_KIND(Data, n == expect,
                fmt::format("{}: dataset {} has {} elements, expected {}", path_, obj, n, expect));
  if (n > 0) {
    const herr_t rc = H5Dread(ds.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    RM_CHECK_KIND(
        Data, rc >= 0,
        fmt::format("{}: cannot read dataset {} (checksum mismatch, damaged file or wrong type)",
                    path_, obj));
  }
}

std::vector<float> File::read_f32(const std::string& obj, Shape* shape) const {
  const Shape s = shape_of(obj);
  std::vector<float> out(static_cast<std::size_t>(shape_numel(s)));
  read_raw(obj, H5T_NATIVE_FLOAT, out.data(), shape_numel(s));
  if (shape != nullptr) *shape = s;
  return out;
}

std::vector<std::int32_t> File::read_i32(const std::string& obj, Shape* shape) const {
  const Shape s = shape_of(obj);
  std::vector<std::int32_t> out(static_cast<std::size_t>(shape_numel(s)));
  read_raw(obj, H5T_NATIVE_INT32, out.data(), shape_numel(s));
  if (shape != nullptr) *shape = s;
  return out;
}

std::vector<std::int64_t> File::read_i64(const std::string& obj, Shape* shape) const {
  const Shape s = shape_of(obj);
  std::vector<std::int64_t> out(static_cast<std::size_t>(shape_numel(s)));
  read_raw(obj, H5T_NATIVE_INT64, out.data(), shape_numel(s));
  if (shape != nullptr) *shape = s;
  return out;
}

double File::read_scalar(const std::string& obj) const {
  RM_CHECK_KIND(Data, exists(obj), fmt::format("{}: missing dataset {}", path_, obj));
  double v = 0;
  read_raw(obj, H5T_NATIVE_DOUBLE, &v, 1);
  return v;
}

std::string File::attr_string(const std::string& obj, const std::string& name) const {
  RM_CHECK_KIND(Data, has_attr(obj, name),
                fmt::format("{}: missing attribute {} on {}", path_, name, obj));
  Handle attr(
      RM_HDF5_CHECK(H5Aopen_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT)));
  Handle type(RM_HDF5_CHECK(H5Aget_type(attr.id())));
  RM_CHECK_KIND(Data, H5Tget_class(type.id()) == H5T_STRING,
                fmt::format("{}: attribute {} is not a string", path_, name));
  RM_CHECK_KIND(Data, H5Tis_variable_str(type.id()) == 0,
                fmt::format("{}: attribute {} is a variable-length string", path_, name));
  const std::size_t size = H5Tget_size(type.id());
  std::string s(size, '\0');
  RM_HDF5_CHECK(H5Aread(attr.id(), type.id(), s.data()));
  const std::size_t nul = s.find('\0');
  if (nul != std::string::npos) s.resize(nul);
  return s;
}

std::int64_t File::attr_int(const std::string& obj, const std::string& name) const {
  RM_CHECK_KIND(Data, has_attr(obj, name),
                fmt::format("{}: missing attribute {} on {}", path_, name, obj));
  Handle attr(
      RM_HDF5_CHECK(H5Aopen_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT)));
  std::int64_t v = 0;
  RM_HDF5_CHECK(H5Aread(attr.id(), H5T_NATIVE_INT64, &v));
  return v;
}

namespace {
herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* out) {
  static_cast<std::vector<std::string>*>(out)->emplace_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> File::list(const std::string& group) const {
  std::vector<std::string> names;
  RM_CHECK_KIND(Data, group == "/" || exists(group),
                fmt::format("{}: missing group {}", path_, group));
  Handle g(RM_HDF5_CHECK(H5Gopen2(id(), group.c_str(), H5P_DEFAULT)));
  RM_HDF5_CHECK(H5Literate(g.id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names));
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace routemoe::h5
