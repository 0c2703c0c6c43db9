#include "framework/h5.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

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

Handle::~Handle() {
  if (id_ < 0) return;
  herr_t rc = 0;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: rc = H5Fclose(id_); break;
    case H5I_GROUP: rc = H5Gclose(id_); break;
    case H5I_DATASET: rc = H5Dclose(id_); break;
    case H5I_DATASPACE: rc = H5Sclose(id_); break;
    case H5I_DATATYPE: rc = H5Tclose(id_); break;
    case H5I_ATTR: rc = H5Aclose(id_); break;
    case H5I_GENPROP_LST: rc = H5Pclose(id_); break;
    default: rc = H5Idec_ref(id_); break;
  }
  if (rc < 0) std::fprintf(stderr, "routemoe: closing an HDF5 object failed\n");
}

namespace {
void quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

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

File File::create(const std::string& path) {
  quiet();
  Handle h(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  RM_CHECK_KIND(Hdf5, h.valid(), fmt::format("cannot create HDF5 file {}", path));
  return File(std::move(h), path);
}

File File::open_read(const std::string& path) {
  quiet();
  Handle h(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  RM_CHECK_KIND(Hdf5, h.valid(), fmt::format("{}: not a readable HDF5 file", path));
  return File(std::move(h), path);
}

File File::open_rw(const std::string& path) {
  quiet();
  Handle h(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
  RM_CHECK_KIND(Hdf5, h.valid(), fmt::format("{}: cannot open HDF5 file for writing", path));
  return File(std::move(h), path);
}

void File::close() {
  if (!handle_.valid()) return;
  RM_HDF5_CHECK(H5Fflush(handle_.id(), H5F_SCOPE_GLOBAL));
  const hid_t id = handle_.id();
  Handle released(std::move(handle_));
  (void)id;
}

bool File::exists(const std::string& obj) const {
  // Walk the path so that a missing intermediate group is "false", not an error.
  std::string prefix;
  std::size_t start = obj.front() == '/' ? 1 : 0;
  while (start <= obj.size()) {
    const std::size_t slash = obj.find('/', start);
    const std::string part = obj.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    prefix += "/" + part;
    if (H5Lexists(id(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

void File::write_raw(const std::string& obj, hid_t mem_type, hid_t file_type, const void* data,
                     const Shape& shape) {
  Handle lcpl(RM_HDF5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
  RM_HDF5_CHECK(H5Pset_create_intermediate_group(lcpl.id(), 1));
  Handle space = make_space(shape);
  Handle ds(RM_HDF5_CHECK(H5Dcreate2(id(), obj.c_str(), file_type, space.id(), lcpl.id(), H5P_DEFAULT, H5P_DEFAULT)));
  if (shape_numel(shape) > 0) RM_HDF5_CHECK(H5Dwrite(ds.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
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
  Handle attr(RM_HDF5_CHECK(H5Acreate_by_name(id(), obj.c_str(), name.c_str(), type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  RM_HDF5_CHECK(H5Awrite(attr.id(), type.id(), padded.data()));
}

void File::set_attr(const std::string& obj, const std::string& name, std::int64_t value) {
  Handle space(RM_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  if (H5Aexists_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT) > 0) {
    RM_HDF5_CHECK(H5Adelete_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT));
  }
  Handle attr(RM_HDF5_CHECK(H5Acreate_by_name(id(), obj.c_str(), name.c_str(), H5T_STD_I64LE, space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
  RM_HDF5_CHECK(H5Awrite(attr.id(), H5T_NATIVE_INT64, &value));
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
  RM_CHECK_KIND(Data, n == expect, fmt::format("{}: dataset {} has {} elements, expected {}", path_, obj, n, expect));
  if (n > 0) {
    const herr_t rc = H5Dread(ds.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    RM_CHECK_KIND(Data, rc >= 0, fmt::format("{}: cannot read dataset {} (damaged file or wrong type)", path_, obj));
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
  RM_CHECK_KIND(Data, has_attr(obj, name), fmt::format("{}: missing attribute {} on {}", path_, name, obj));
  Handle attr(RM_HDF5_CHECK(H5Aopen_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT)));
  Handle type(RM_HDF5_CHECK(H5Aget_type(attr.id())));
  RM_CHECK_KIND(Data, H5Tget_class(type.id()) == H5T_STRING, fmt::format("{}: attribute {} is not a string", path_, name));
  RM_CHECK_KIND(Data, H5Tis_variable_str(type.id()) == 0, fmt::format("{}: attribute {} is a variable-length string", path_, name));
  const std::size_t size = H5Tget_size(type.id());
  std::string s(size, '\0');
  RM_HDF5_CHECK(H5Aread(attr.id(), type.id(), s.data()));
  const std::size_t nul = s.find('\0');
  if (nul != std::string::npos) s.resize(nul);
  return s;
}

std::int64_t File::attr_int(const std::string& obj, const std::string& name) const {
  RM_CHECK_KIND(Data, has_attr(obj, name), fmt::format("{}: missing attribute {} on {}", path_, name, obj));
  Handle attr(RM_HDF5_CHECK(H5Aopen_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT)));
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
  RM_CHECK_KIND(Data, group == "/" || exists(group), fmt::format("{}: missing group {}", path_, group));
  Handle g(RM_HDF5_CHECK(H5Gopen2(id(), group.c_str(), H5P_DEFAULT)));
  RM_HDF5_CHECK(H5Literate(g.id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names));
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace routemoe::h5
